"""Wire messages of the worker protocol, version 1 (docs/protocol.md).

Decoding is strict about types (an int field refuses "3" and true) and tolerant of
unknown fields, so a newer agent can talk to an older control plane. `decode` turns
every shape error into `ProtocolError` with a path-qualified message.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

T = TypeVar("T")


class ProtocolError(ValueError):
    """A message did not match its schema."""


class Resources(msgspec.Struct, frozen=True):
    cpus: int
    memory_mb: int
    disk_gb: int
    memory_available_mb: int | None = None
    disk_free_gb: int | None = None


class RegisterRequest(msgspec.Struct, frozen=True):
    protocol: int
    agent_version: str
    hostname: str
    resources: Resources


class RegisterReply(msgspec.Struct, frozen=True):
    worker_id: str
    secret: str
    heartbeat_interval: float


class ContainerReport(msgspec.Struct, frozen=True):
    user_id: str
    state: str
    health: str
    image_id: str = ""
    started_at: str = ""
    restart_count: int = 0
    error: str | None = None


class HostReport(msgspec.Struct, frozen=True):
    docker_version: str | None = None
    metadata_blocked: bool | None = None


class Heartbeat(msgspec.Struct, frozen=True):
    agent_version: str
    applied_generation: int
    resources: Resources
    containers: list[ContainerReport]
    host: HostReport | None = None


class HeartbeatReply(msgspec.Struct, frozen=True):
    heartbeat_interval: float
    generation: int


class PortSpec(msgspec.Struct, frozen=True):
    container_port: int
    host_ip: str = "127.0.0.1"


class VolumeSpec(msgspec.Struct, frozen=True):
    name: str
    target: str


class ResourceSpec(msgspec.Struct, frozen=True):
    memory_mb: int
    cpus: float
    pids: int


class HealthSpec(msgspec.Struct, frozen=True):
    path: str
    port: int


class ContainerSpec(msgspec.Struct, frozen=True):
    user_id: str
    name: str
    image: str
    user: str
    command: list[str] | None
    env: dict[str, str]
    ports: list[PortSpec]
    volumes: list[VolumeSpec]
    resources: ResourceSpec
    health: HealthSpec
    labels: dict[str, str]
    hostname: str
    spec_hash: str
    # Full host name Traefik routes to this container, e.g. "alice.example.com".
    route_host: str = ""


class Assignments(msgspec.Struct, frozen=True):
    generation: int
    containers: list[ContainerSpec]
    # Users whose volumes the worker deletes once their container is gone.
    purge: list[str] = msgspec.field(default_factory=list)


_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def decode(data: bytes, kind: type[T]) -> T:
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        return decoder.decode(data)  # type: ignore[no-any-return]
    except msgspec.DecodeError as exc:
        raise ProtocolError(str(exc)) from None


def encode(message: Any) -> bytes:
    return msgspec.json.encode(message)


def to_builtins(message: Any) -> Any:
    return msgspec.to_builtins(message)
