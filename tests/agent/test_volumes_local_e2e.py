"""Volumes that follow the user on one machine (issue 13, point 6): the real control plane
with USER_VOLUMES on and the local provider running two real agents as processes, each
mounting the user's loop-backed volume itself (losetup, mkfs.ext4, mount: these tests run
as root). The same code path as with Hetzner: the control plane decides, the provider
records attach and detach, the agents mount, report and run the busybox tenant.

Checked: a file written in the user's state survives a drain (the user runs on the other
worker with it) and a worker killed with kill -9 whose server is then deleted; a volume
whose file holds something that is not ext4 never gives the user an empty start: the
user waits with the agent's error on it, and starts once the file is usable."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from control.capacity.providers.hetzner_volumes import volume_name
from control.capacity.providers.local import LocalProvider
from control.settings import Settings
from tests.agent.conftest import new_user
from tests.agent.test_e2e import plane_settings, until
from tests.fixtures import ControlPlane

pytestmark = pytest.mark.docker

STATE = "/home/node/.openclaw"  # the generic profile's `state` volume
FAST_AGENT = {"POLL_WAIT": "2", "RECONCILE_INTERVAL": "1"}


async def start_plane(
    control_factory: Callable[..., ControlPlane],
    local_providers: list[LocalProvider],
    workers: int,
    **overrides: Any,
) -> ControlPlane:
    def provider(settings: Settings) -> LocalProvider:
        made = LocalProvider(
            settings.local_workers_dir,
            extra_env=FAST_AGENT,
            max_servers=settings.local_max_servers,
            locations=settings.local_locations,
        )
        local_providers.append(made)
        return made

    settings = plane_settings() | {
        "user_volumes": True,
        "local_max_servers": workers,
        "max_servers": workers,
        "autoscale_interval": 1.0,
    }
    control = control_factory(provider, **(settings | overrides))
    await control.start()
    return control


async def active_servers(
    control: ControlPlane, count: int, at_least: bool = False
) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        _, body = await control.admin("GET", "/v1/servers")
        active = [s for s in body.get("servers", []) if s["status"] == "active"]
        enough = len(active) >= count if at_least else len(active) == count
        return active if enough else None

    found: list[dict[str, Any]] = await until(check, f"{count} active local workers", 90)
    return found


async def running_on(control: ControlPlane, user: str, away_from: str | None = None) -> str:
    """The server `user` runs on once it runs (on another than `away_from` if named)."""

    async def check() -> str | None:
        _, body = await control.admin("GET", f"/v1/users/{user}")
        where = body.get("server_id")
        ok = body.get("state") == "running" and where not in (None, away_from)
        return str(where) if ok else None

    found: str = await until(check, f"{user} running away from {away_from}", 120)
    return found


def sh(dclient: docker.DockerClient, user: str, script: str) -> str:
    (container,) = dclient.containers.list(filters={"label": f"clawfleet.user={user}"})
    code, out = container.exec_run(["/bin/busybox", "sh", "-c", script], user="1000:1000")
    assert code == 0, out
    return str(out.decode())


async def test_state_follows_the_user_through_a_drain_and_a_killed_deleted_worker(
    control_factory: Callable[..., ControlPlane],
    test_images: dict[str, str],
    users: list[str],
    local_providers: list[LocalProvider],
    dclient: docker.DockerClient,
) -> None:
    control = await start_plane(control_factory, local_providers, 2, dead_after=10.0)
    user = new_user()
    users.append(user)
    status, _ = await control.admin("POST", "/v1/users", {"user_id": user, "subdomain": user})
    assert status == 201
    first = await running_on(control, user)
    sh(dclient, user, f"echo drained > {STATE}/a && mkdir {STATE}/d && echo x > {STATE}/d/b")

    # The drain leaves the user no room: the autoscaler starts the second local worker.
    await control.admin("POST", f"/v1/servers/{first}/drain")
    second = await running_on(control, user, away_from=first)
    # The drained first worker may already be gone: the heartbeat that showed it empty
    # ran the autoscaler at once, and a drained empty server is deleted.
    assert second in {s["id"] for s in await active_servers(control, 1, at_least=True)}
    assert sh(dclient, user, f"cat {STATE}/a {STATE}/d/b") == "drained\nx\n"

    sh(dclient, user, f"echo killed > {STATE}/c && sync")
    (provider,) = local_providers
    home = provider.root / (await provider_id(control, second))
    pid = int(json.loads((home / "server.json").read_text())["pid"])
    os.kill(pid, signal.SIGKILL)
    await asyncio.to_thread(provider._delete, home.name)  # the server is gone with it
    # Dead once DEAD_AFTER passes without a heartbeat; the user lands on a live worker
    # (a new one: the drained first worker was deleted once empty).
    await running_on(control, user, away_from=second)
    assert sh(dclient, user, f"cat {STATE}/a {STATE}/d/b {STATE}/c") == "drained\nx\nkilled\n"
    assert len(list((provider.root / "volumes").glob("*.img"))) == 1  # never a fresh disk


async def provider_id(control: ControlPlane, server_id: str) -> str:
    _, body = await control.admin("GET", f"/v1/servers/{server_id}")
    return str(body["provider_id"])


async def test_an_unusable_volume_file_keeps_the_user_waiting_with_the_error_never_empty(
    control_factory: Callable[..., ControlPlane],
    test_images: dict[str, str],
    users: list[str],
    local_providers: list[LocalProvider],
    dclient: docker.DockerClient,
) -> None:
    control = await start_plane(control_factory, local_providers, 1)
    user = new_user()
    users.append(user)
    backing = Path(
        control.settings.local_workers_dir, "volumes", f"{volume_name('default', user)}.img"
    )
    backing.parent.mkdir(parents=True, exist_ok=True)
    backing.write_bytes(b"not a file system " * 60_000)  # something, and not ext4
    status, _ = await control.admin("POST", "/v1/users", {"user_id": user, "subdomain": user})
    assert status == 201

    async def waiting_with_error() -> dict[str, Any] | None:
        _, body = await control.admin("GET", f"/v1/users/{user}")
        error = (body.get("volume") or {}).get("error") or ""
        return body if "not blank" in error else None

    seen = await until(waiting_with_error, "the mount error on the user", 90)
    assert seen["state"] != "running"
    assert not dclient.containers.list(all=True, filters={"label": f"clawfleet.user={user}"})
    assert backing.read_bytes().startswith(b"not a file system")  # left untouched

    with backing.open("r+b") as f:  # the operator blanks it: the same path now formats
        f.write(bytes(len(b"not a file system " * 60_000)))
    await running_on(control, user)
    assert sh(dclient, user, f"ls -A {STATE}") == ""
    with contextlib.suppress(FileNotFoundError):
        assert backing.stat().st_size > 0
