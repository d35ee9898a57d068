"""The desired container of a user, as its worker receives it.

Contract: `build_spec` is pure; `spec_hash` covers every field the worker acts on,
so any change to image, limits, env or routing gives a new hash and the worker
replaces the container, while an unchanged user keeps the same hash across
control-plane restarts and versions (the JSON is canonical: sorted keys). The labels
carry the worker the spec is for and the cluster (`clawfleet.worker`,
`clawfleet.cluster`): an agent refuses a spec for another worker, and owns only Docker
objects carrying its own worker id and cluster (docs/agent.md, "Ownership"), so several
agents can share one Docker engine. The spec of one user therefore differs per worker.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from control.settings import Settings
from control.users.plans import Plan
from shared.protocol import (
    ContainerSpec,
    HealthSpec,
    PortSpec,
    ResourceSpec,
    VolumeSpec,
    to_builtins,
)

# OpenClaw keeps its state and config here (uid 1000 `node`).
STATE_MOUNTS = (("state", "/home/node/.openclaw"), ("config", "/home/node/.config/openclaw"))


@dataclass(frozen=True)
class UserPlacement:
    user_id: str
    subdomain: str
    plan: Plan
    env: dict[str, str]


def build_spec(user: UserPlacement, settings: Settings, worker_id: str) -> ContainerSpec:
    fields = {
        "user_id": user.user_id,
        "name": f"clawfleet-{user.user_id}",
        "image": settings.agent_image,
        "user": settings.agent_user,
        "command": None,
        "env": dict(user.env),
        "ports": [PortSpec(container_port=settings.agent_port)],
        "volumes": [
            VolumeSpec(name=f"clawfleet-{user.user_id}-{kind}", target=target)
            for kind, target in STATE_MOUNTS
        ],
        "resources": ResourceSpec(
            memory_mb=user.plan.memory_mb, cpus=user.plan.cpus, pids=user.plan.pids
        ),
        "health": HealthSpec(path=settings.agent_health_path, port=settings.agent_port),
        "labels": {
            "clawfleet.plan": user.plan.name,
            "clawfleet.subdomain": user.subdomain,
            "clawfleet.worker": worker_id,
            "clawfleet.cluster": settings.cluster_name,
        },
        "hostname": user.subdomain,
        "route_host": f"{user.subdomain}.{settings.base_domain}",
    }
    digest = hashlib.sha256(
        json.dumps(to_builtins(fields), sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    return ContainerSpec(spec_hash=digest, **fields)  # type: ignore[arg-type]
