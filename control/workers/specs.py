"""The desired container of a user, as its worker receives it.

Contract: `build_spec` is pure; `spec_hash` covers every field the worker acts on,
so any change to image, limits, env or routing gives a new hash and the worker
replaces the container, while an unchanged user keeps the same hash across
control-plane restarts and versions (the JSON is canonical: sorted keys). The labels
carry the worker the spec is for and the cluster (`clawfleet.worker`,
`clawfleet.cluster`): an agent refuses a spec for another worker, and owns only Docker
objects carrying its own worker id and cluster (docs/agent.md, "Ownership"), so several
agents can share one Docker engine. The spec of one user therefore differs per worker.

What the container runs comes from the tenant profile (TENANT_PROFILE,
control/settings/profiles.py, docs/tenants.md): command (`{port}` filled), static env
plus `NODE_OPTIONS=--max-old-space-size=<plan MB x heap_fraction>` (and the gateway
token, unless the sign-in gate is on: then it only derives the key), volumes, health
path, the config file (owned keys rendered with the user's origin, the port and the
identity header), the sign-in key (`shared.signin.signin_key` of the gateway token, when
the profile's gate is on) and the secret file (the user's secrets as KEY=value lines;
absent when there are none), and the user's block volume when it is attached to the
worker the spec is for (control/volumes/). Secret values are only ever in
`secret_files`, never in env or labels; the hash covers them, so changing a secret
replaces the container. So does a restart asked for (`restarts`, the label
`clawfleet.restart`): the container is replaced, its volumes and state kept.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from control.plans import Plan
from control.settings import Settings
from control.settings.profiles import Profile, render_owned
from control.settings.rules import loopback_router
from control.users.access import user_url
from shared.protocol import (
    BlockVolumeSpec,
    ConfigFileSpec,
    ContainerSpec,
    HealthSpec,
    PortSpec,
    ResourceSpec,
    SecretFileSpec,
    VolumeSpec,
    to_builtins,
)
from shared.signin import signin_key

GATEWAY_TOKEN_ENV = "OPENCLAW_GATEWAY_TOKEN"  # noqa: S105 (a variable's name, not a secret)


@dataclass(frozen=True)
class UserPlacement:
    user_id: str
    subdomain: str
    plan: Plan
    env: dict[str, str]  # the gateway token (GATEWAY_TOKEN_ENV), when the user has one
    secrets: dict[str, str] = field(default_factory=dict)
    # The user's block volume, set only on the server it is attached to (issue 13).
    volume: BlockVolumeSpec | None = None
    restarts: int = 0  # restarts asked for (a new count is a new hash: a new container)


def _volume(user: UserPlacement, kind: str) -> str:
    return f"clawfleet-{user.user_id}-{kind}"


def _env(user: UserPlacement, profile: Profile) -> dict[str, str]:
    env = dict(profile.env) | dict(user.env)
    if profile.signin:
        # Behind the sign-in gate the token only derives the key: OpenClaw refuses to
        # start in trusted-proxy mode with a token set (docs/openclaw-config.md, 1).
        env.pop(GATEWAY_TOKEN_ENV, None)
    if profile.heap_fraction:
        heap = int(user.plan.memory_mb * profile.heap_fraction)
        env["NODE_OPTIONS"] = f"--max-old-space-size={heap}"
    return env


def _files(user: UserPlacement, settings: Settings) -> dict[str, Any]:
    """The config file, secret file and sign-in gate of the user's spec."""
    profile = settings.tenant_profile
    found: dict[str, Any] = {"config_files": [], "secret_files": []}
    if profile.config is not None:
        owned = render_owned(
            profile,
            user_url(settings, user.subdomain),
            settings.agent_port,
            profile.identity_header,
            loopback=loopback_router(settings),
        )
        found["config_files"].append(
            ConfigFileSpec(
                volume=_volume(user, profile.config.volume),
                path=profile.config.path,
                seed=profile.config.seed,
                owned=owned,
            )
        )
    if user.secrets and profile.secret_volume:
        content = "".join(f"{name}={value}\n" for name, value in sorted(user.secrets.items()))
        found["secret_files"].append(
            SecretFileSpec(
                volume=_volume(user, profile.secret_volume),
                path=profile.secret_path,
                content=content,
            )
        )
    token = user.env.get(GATEWAY_TOKEN_ENV, "")
    gated = profile.signin and bool(token)
    found["signin_key"] = signin_key(token) if gated else ""
    found["identity_header"] = profile.identity_header if gated else ""
    # Left out when empty (the protocol's defaults): a spec without them keeps the hash
    # it had before these fields existed, so an upgrade restarts no container.
    return {key: value for key, value in found.items() if value}


def build_spec(user: UserPlacement, settings: Settings, worker_id: str) -> ContainerSpec:
    profile = settings.tenant_profile
    port = settings.agent_port
    command = [a.replace("{port}", str(port)) for a in profile.command or ()] or None
    fields = {
        "user_id": user.user_id,
        "name": f"clawfleet-{user.user_id}",
        "image": settings.agent_image,
        "user": settings.agent_user,
        "command": command,
        "env": _env(user, profile),
        "ports": [PortSpec(container_port=port)],
        "volumes": [
            VolumeSpec(name=_volume(user, kind), target=target) for kind, target in profile.volumes
        ],
        "resources": ResourceSpec(
            memory_mb=user.plan.memory_mb,
            cpus=user.plan.cpus,
            pids=user.plan.pids,
            cpu_limit=user.plan.cpu_limit,
        ),
        "health": HealthSpec(
            path=profile.health_path or settings.agent_health_path,
            port=port,
            start_seconds=round(profile.startup_seconds),
            headers=dict(profile.health_headers),
        ),
        "labels": {
            "clawfleet.plan": user.plan.name,
            "clawfleet.subdomain": user.subdomain,
            "clawfleet.worker": worker_id,
            "clawfleet.cluster": settings.cluster_name,
            # Only once asked for: a user never restarted keeps the hash it had.
            **({"clawfleet.restart": str(user.restarts)} if user.restarts else {}),
        },
        # Fixed for the user's life: OpenClaw reclaims a killed gateway's owner lease
        # only from the same hostname (docs/openclaw-config.md, 10).
        "hostname": user.subdomain,
        "route_host": f"{user.subdomain}.{settings.base_domain}",
        **_files(user, settings),
        # Left out when None, as the files are: a spec without a volume keeps its hash.
        **({"volume": user.volume} if user.volume is not None else {}),
    }
    digest = hashlib.sha256(
        json.dumps(to_builtins(fields), sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    return ContainerSpec(spec_hash=digest, **fields)
