"""PROVIDER=local, the default `make run` path: the autoscaler "creates a server" by
starting a real agent process on this machine, which registers and runs the user's
container on the local Docker engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from control.capacity.providers.local import LocalProvider
from control.settings import Settings
from tests.agent.conftest import new_user
from tests.agent.test_e2e import plane_settings, wait_running
from tests.fixtures import ControlPlane

pytestmark = pytest.mark.docker


async def test_local_provider_starts_one_agent_that_runs_the_user(
    control_factory: Callable[..., ControlPlane],
    test_images: dict[str, str],
    users: list[str],
    local_providers: list[LocalProvider],
    tmp_path: Path,
) -> None:
    def provider(settings: Settings) -> LocalProvider:
        made = LocalProvider(
            settings.local_workers_dir,
            extra_env={"POLL_WAIT": "2", "RECONCILE_INTERVAL": "1", "TRAEFIK_TLS": "false"},
        )
        local_providers.append(made)
        return made

    control = control_factory(
        provider, **plane_settings(), max_servers=5, autoscale_interval=3600.0
    )
    await control.start()
    first, second = new_user(), new_user()
    users.extend([first, second])
    for user in (first, second):
        status, _ = await control.admin("POST", "/v1/users", {"user_id": user, "subdomain": user})
        assert status == 201
    for user in (first, second):
        await wait_running(control, user)
    _, listing = await control.admin("GET", "/v1/servers")
    # One machine is one server, whatever MAX_SERVERS says.
    assert len(listing["servers"]) == 1
    (server,) = listing["servers"]
    assert server["origin"] == "provider" and server["status"] == "active"
    home = Path(control.settings.local_workers_dir) / server["name"]
    assert (home / "agent.env").stat().st_mode & 0o777 == 0o600
    state_files = [p for p in (home / "state").iterdir() if p.is_file()]
    assert state_files and all(p.stat().st_mode & 0o777 == 0o600 for p in state_files)
