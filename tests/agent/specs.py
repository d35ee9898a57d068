"""Hand-built container specs for tests that drive the reconciler without a control plane."""

from __future__ import annotations

import hashlib

from shared.protocol import ContainerSpec, HealthSpec, PortSpec, ResourceSpec, VolumeSpec, encode
from tests.agent.images import PORT


def make_spec(
    user_id: str,
    image: str,
    *,
    env: dict[str, str] | None = None,
    memory_mb: int = 64,
    route_host: str = "",
) -> ContainerSpec:
    fields = dict(
        user_id=user_id,
        name=f"clawfleet-{user_id}",
        image=image,
        user="1000:1000",
        command=None,
        env=env or {"GATEWAY_TOKEN": "s3cret-gw-token"},
        ports=[PortSpec(container_port=PORT)],
        volumes=[VolumeSpec(name=f"clawfleet-{user_id}-state", target="/data")],
        resources=ResourceSpec(memory_mb=memory_mb, cpus=0.5, pids=64),
        health=HealthSpec(path="/healthz", port=PORT),
        labels={"clawfleet.plan": "test"},
        hostname=user_id,
        route_host=route_host,
        spec_hash="",
    )
    digest = hashlib.sha256(encode(ContainerSpec(**fields))).hexdigest()  # type: ignore[arg-type]
    fields["spec_hash"] = digest
    return ContainerSpec(**fields)  # type: ignore[arg-type]
