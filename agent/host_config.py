"""The parts of a user container's host config that are decided, not looked up (the
isolation profile itself is written down in agent/runtime.py `DockerRuntime._create`).

Contract: all pure. `cpu_options` is the plan's CPU as a weight, or a quota with
`cpu_limit`; `is_root_user` refuses anything but numeric `uid:gid` with both ids
non-zero; `mounts` are the spec's named volumes, or the directories made on its block
volume (refused when one is missing: never an empty directory in its place);
`LogLimit` bounds what the engine keeps of a container's output.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from docker.types import LogConfig, Mount

from agent.docker_objects import DockerError
from shared.names import parse_container_user
from shared.protocol import ContainerSpec, ResourceSpec


def cpu_options(resources: ResourceSpec) -> dict[str, int]:
    """A weight proportional to the reserved CPUs (1024 = one CPU, Docker's own scale),
    or with `cpu_limit` a hard quota of exactly that."""
    if resources.cpu_limit:
        return {"nano_cpus": int(resources.cpus * 1_000_000_000)}
    return {"cpu_shares": max(2, round(resources.cpus * 1024))}


def is_root_user(user: str) -> bool:
    """True unless `user` is numeric uid:gid with both ids non-zero (names can be root)."""
    try:
        parse_container_user(user)
    except ValueError:
        return True
    return False


def mounts(spec: ContainerSpec, binds: Mapping[str, str]) -> list[Mount]:
    if spec.volume is None:
        return [Mount(v.target, v.name, type="volume") for v in spec.volumes]
    missing = [v.name for v in spec.volumes if v.name not in binds]
    if missing:
        raise DockerError(f"volume {spec.volume.id} is not mounted for {', '.join(missing)}")
    return [Mount(v.target, binds[v.name], type="bind") for v in spec.volumes]


@dataclass(frozen=True)
class LogLimit:
    """Each container's logs: json-file (what `docker logs` reads), rotated at `max_mb`,
    `files` kept (CONTAINER_LOG_MB, CONTAINER_LOG_FILES), whatever the engine's default."""

    max_mb: int = 10
    files: int = 3

    def config(self) -> LogConfig:
        limits = {"max-size": f"{self.max_mb}m", "max-file": str(self.files)}
        return LogConfig(type=LogConfig.types.JSON, config=limits)


DEFAULT_LOGS = LogLimit()  # CONTAINER_LOG_MB and CONTAINER_LOG_FILES' defaults
