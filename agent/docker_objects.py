"""The Docker objects the agent manages, as it reads them, and how a Docker call fails.

Contract: `observed_from_inspect` turns a container's inspect data into an `Observed`
(its host ports are its loopback bindings only: the agent never publishes elsewhere);
a `Tagged` is a managed network or volume with its labels. `owned_labels` are the labels
that make an object this owner's (agent/ownership.py); the runtime writes them last, so a
spec can never overwrite them. A `DockerError`'s message is safe to log and report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.errors import AgentError
from agent.ownership import LABEL_MANAGED, LABEL_USER, Owner

LABEL_HASH = "clawfleet.spec_hash"
LABEL_GENERATION = "clawfleet.generation"
LABEL_IMAGE = "clawfleet.image"


class DockerError(AgentError):
    """A Docker operation failed; the message is safe to log and report."""

    code = "docker_error"


class ForeignObjectError(DockerError):
    """An object the spec names exists but does not carry this user's labels."""


@dataclass(frozen=True)
class Observed:
    """One managed container as inspected."""

    id: str
    name: str
    user_id: str
    spec_hash: str
    image_ref: str
    image_id: str
    status: str  # Docker State.Status: created, running, restarting, exited, paused, dead
    started_at: str
    restart_count: int
    host_ports: Mapping[int, int] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.status == "running"


@dataclass(frozen=True)
class Tagged:
    """A managed network (id) or volume (id is its name), with its labels."""

    id: str
    name: str
    labels: Mapping[str, str]

    @property
    def user_id(self) -> str:
        return self.labels.get(LABEL_USER, "")


def owned_labels(user_id: str, owner: Owner) -> dict[str, str]:
    return {LABEL_MANAGED: "true", LABEL_USER: user_id, **owner.labels()}


def _host_ports(inspect: Mapping[str, Any]) -> dict[int, int]:
    ports: dict[int, int] = {}
    bindings = (inspect.get("NetworkSettings") or {}).get("Ports") or {}
    for key, binds in bindings.items():
        if not binds:
            continue
        container_port = int(str(key).split("/", 1)[0])
        for bind in binds:
            # Only loopback bindings count: the agent never publishes elsewhere.
            if bind.get("HostIp") in ("127.0.0.1", "") and bind.get("HostPort"):
                ports[container_port] = int(bind["HostPort"])
                break
    return ports


def observed_from_inspect(data: Mapping[str, Any]) -> Observed:
    labels = (data.get("Config") or {}).get("Labels") or {}
    state = data.get("State") or {}
    return Observed(
        id=str(data["Id"]),
        name=str(data.get("Name", "")).lstrip("/"),
        user_id=labels.get(LABEL_USER, ""),
        spec_hash=labels.get(LABEL_HASH, ""),
        image_ref=labels.get(LABEL_IMAGE, ""),
        image_id=str(data.get("Image", "")),
        status=str(state.get("Status", "unknown")),
        started_at=str(state.get("StartedAt", "")),
        restart_count=int(data.get("RestartCount", 0) or 0),
        host_ports=_host_ports(data),
        labels=dict(labels),
    )
