"""The agent's poll and heartbeat loops can learn at the same moment that the control plane
no longer knows the worker (its database was restored from a backup taken before the
worker registered). Only one of them may re-register: the join token works once, and the
other's registration was refused with `token_used` (seen in a CI run: the agent then
stayed unregistered). The in-process `Daemon` against the real control plane; Docker is
pointed at a socket that does not exist, iptables at `true`."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

from agent.client import ControlPlaneError
from agent.config import load_settings
from agent.daemon import Daemon
from tests.agent.test_e2e import until
from tests.fixtures import ControlPlane
from tests.ports import free_port
from tests.test_protocol import token


async def test_two_loops_refused_at_once_re_register_once(
    control_factory: Callable[..., ControlPlane], tmp_path: Path
) -> None:
    plane = control_factory()
    await plane.start()
    join = await token(plane)
    await plane.stop()
    db = Path(plane.settings.database_path)
    await asyncio.to_thread(shutil.copy, db, tmp_path / "backup.db")  # before it registered
    await plane.start()
    env = {
        "CONTROL_URL": plane.url,
        "BOOTSTRAP_TOKEN": join,
        "STATE_DIR": str(tmp_path / "state"),
        "TRAEFIK_DYNAMIC_DIR": str(tmp_path / "traefik"),
        "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock",
        "IPTABLES": "true",
        "AUTH_PORT": str(free_port()),
        "POLL_WAIT": "1",
        "BACKOFF_BASE": "0.05",
        "BACKOFF_MAX": "0.3",
    }
    daemon = Daemon(load_settings(env))
    running = asyncio.create_task(daemon.run())
    try:
        await until(lambda: _registered(daemon), "first registration")
        first = daemon.creds.worker_id if daemon.creds else None
        # Restored: the control plane never heard of this worker; the token is unused there.
        await plane.stop()
        await asyncio.to_thread(shutil.copy, tmp_path / "backup.db", db)
        for suffix in ("-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)
        await plane.start()
        daemon._token = join  # as a restarted agent reads it from its env file again
        refused = ControlPlaneError(401, "unknown_worker", "unknown worker")
        handled = await asyncio.gather(
            daemon._handle_auth_error(refused), daemon._handle_auth_error(refused)
        )
        assert handled == [True, True]
        assert daemon.creds is not None and daemon.creds.worker_id != first
        _, listing = await plane.admin("GET", "/v1/servers")
        assert [s["id"] for s in listing["servers"]] == [daemon.creds.worker_id]
    finally:
        daemon.stop()
        assert await asyncio.wait_for(running, 20) == 0


async def _registered(daemon: Daemon) -> bool:
    return daemon.creds is not None
