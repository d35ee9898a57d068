"""A real control plane with origin TLS on (issue 14), for the tests that reach it over
HTTP: the Hetzner provider (the fake Hetzner API), DNS on the fake Cloudflare API, whose
Origin CA signs with a real CA. Origin TLS is on exactly when both are (tls_rules.enabled).

`tls_plane` starts it (import `tls_plane_fixture  # noqa: F401`); `joined` registers a worker with the agent's own ControlClient and
returns its credentials; `ready` waits until the control plane's start-up has set up
origin pulls (what a worker sees: a policy with a client CA)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.client import ControlClient
from agent.origin_tls import Signer
from shared.protocol import OriginTlsPolicy, RegisterRequest, Resources
from shared.version import PROTOCOL_VERSION, __version__
from tests.agent.test_e2e import until
from tests.fakes.cloudflare import CloudflareFake
from tests.fakes.hetzner import HetznerFake, agent_dist, fleet_settings, provider_with_timeout
from tests.fixtures import ControlPlane
from tests.test_protocol import token

ZONE = "example.com"
WILDCARD = f"*.{ZONE}"
Start = Callable[..., Awaitable[ControlPlane]]


@pytest.fixture(name="tls_plane")
def tls_plane_fixture(
    control_factory: Callable[..., ControlPlane],
    hetzner_fake: HetznerFake,
    cloudflare_fake: CloudflareFake,
    tmp_path: Path,
) -> Start:
    cloudflare_fake.zone_name = ZONE
    dist = agent_dist(tmp_path / "dist")

    async def start(**overrides: Any) -> ControlPlane:
        settings = fleet_settings(hetzner_fake, dist) | {
            "dns_provider": "cloudflare",
            "cloudflare_api_token": cloudflare_fake.token,
            "cloudflare_zone_id": cloudflare_fake.zone_id,
            "cloudflare_api_base": cloudflare_fake.url,
            "base_domain": ZONE,
            "dns_reconcile_interval": 3600.0,
            "heartbeat_interval": 1.0,
        }
        plane = control_factory(provider_with_timeout(2.0, None), **(settings | overrides))
        await plane.start()
        return plane

    return start


async def joined(plane: ControlPlane, client: ControlClient) -> tuple[str, str]:
    """A worker joined with a join token, as the agent registers: (worker id, secret)."""
    reply = await client.register(
        await token(plane),
        RegisterRequest(
            protocol=PROTOCOL_VERSION,
            agent_version=__version__,
            hostname="tls-worker",
            resources=Resources(cpus=2, memory_mb=4096, disk_gb=80),
        ),
    )
    return reply.worker_id, reply.secret


def signer(client: ControlClient, worker: str, secret: str) -> Signer:
    """Exactly what the daemon binds (agent/daemon.py `_signer`)."""
    return Signer(
        lambda: client.origin_tls_policy(worker, secret),
        lambda req: client.origin_certificate(worker, secret, req),
    )


async def ready(client: ControlClient, worker: str, secret: str) -> OriginTlsPolicy:
    async def policy() -> OriginTlsPolicy | None:
        got = await client.origin_tls_policy(worker, secret)
        return got if got.client_ca else None

    found: OriginTlsPolicy = await until(policy, "origin pulls set up at start-up", timeout=30)
    return found


__all__ = ["WILDCARD", "ZONE", "joined", "ready", "signer", "tls_plane_fixture"]
