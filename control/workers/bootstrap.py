"""What a new worker boots from: the agent wheel the control plane serves, and the
user data that installs it.

Contract: `AgentDist.find` locates the wheel of exactly this control plane's version
in AGENT_DIST_DIR (`make dist` builds it) and pins its sha256; the worker's script
refuses anything else. `hetzner_user_data` renders cloud_init's script for one server
and its one-time bootstrap token; the wheel is fetched from PUBLIC_URL/v1/dist/.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cloud_init.render import WorkerBootstrap, render_user_data
from control.errors import ConfigurationError
from control.settings import Settings
from shared.version import __version__

# (server id, bootstrap token) -> the user data a new server boots from. The autoscaler
# is given one at construction (control/capacity/scaler.py) and never builds its own.
UserDataRenderer = Callable[[str, str], str]


class DistMissing(ConfigurationError):
    """The agent wheel of this version is not in AGENT_DIST_DIR (`make dist`)."""

    code = "dist_missing"


@dataclass(frozen=True)
class AgentDist:
    path: Path
    sha256: str

    @property
    def filename(self) -> str:
        return self.path.name

    @classmethod
    def find(cls, directory: str, version: str = __version__) -> AgentDist:
        candidates = sorted(Path(directory).glob(f"clawfleet-{version}-*.whl"))
        if not candidates:
            raise DistMissing(
                f"AGENT_DIST_DIR: no clawfleet-{version}-*.whl in {directory!r}; "
                "run `make dist` (workers install the agent from this wheel)"
            )
        path = candidates[-1]
        return cls(path, hashlib.sha256(path.read_bytes()).hexdigest())


def hetzner_user_data(settings: Settings, dist: AgentDist) -> UserDataRenderer:
    def render(server_id: str, token: str) -> str:
        return render_user_data(
            WorkerBootstrap(
                control_url=settings.public_url,
                bootstrap_token=token,
                agent_version=__version__,
                agent_wheel_url=f"{settings.public_url}/v1/dist/{dist.filename}",
                agent_wheel_sha256=dist.sha256,
                traefik_version=settings.traefik_version,
                acme_email=settings.acme_email or None,
                image=settings.hetzner_image,
                break_glass_ssh_key=settings.break_glass_ssh_key or None,
            )
        )

    return render
