"""A lost volume recovered from a snapshot, end to end on one machine (issue 13,
docs/backups.md "A lost volume"): the real control plane with USER_VOLUMES on, backups
against a real S3 server (moto, tests/s3server.py), the local provider running a real
agent that mounts loop-backed volumes and runs the real restic. These tests run as root.

Checked: after the user's volume is deleted at the provider by hand, the operator's
recovery restores the chosen snapshot onto a new volume and the user's container comes
back on it with the files of that snapshot (and not the file written after it, which
was only on the lost volume)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from typing import Any

import docker
import pytest

from control.appkeys import SCALER
from control.capacity.providers.local import LocalProvider
from tests.agent.conftest import new_user
from tests.agent.test_backups_local_e2e import (
    asked,
    container_back,
    finished,
    s3,  # noqa: F401 (a fixture)
)
from tests.agent.test_e2e import until
from tests.agent.test_volumes_local_e2e import STATE, running_on, sh, start_plane
from tests.fixtures import ControlPlane
from tests.s3server import ACCESS_KEY, S3, SECRET_KEY

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(
        shutil.which("restic") is None and os.environ.get("CI") != "true",
        reason="restic is not installed (apt-get install restic; .ci/run does)",
    ),
]


async def delete_by_hand(control: ControlPlane, user: str) -> str:
    """The user's volume detached and deleted at the provider; returns its id."""
    assert control.app is not None
    provider = control.app[SCALER].provisioner.provider
    (volume,) = await provider.list_volumes({"clawfleet-user": user})
    await provider.detach(volume)
    await provider.delete_volume(volume)
    assert await provider.list_volumes({"clawfleet-user": user}) == []
    return volume.provider_id


async def recover(control: ControlPlane, user: str, snapshot_id: str) -> None:
    """Asks for the recovery, once the user's last job (a scheduled snapshot) is over."""

    async def ask() -> bool:
        body = {"snapshot_id": snapshot_id}
        status, reply = await control.admin("POST", f"/v1/users/{user}/recover", body)
        if status == 409 and reply["error"]["code"] == "backup_in_flight":
            return False
        assert status == 202, reply
        return True

    await until(ask, f"the recovery of {user} accepted", 180)


async def test_a_lost_volume_comes_back_from_its_snapshot_on_a_new_volume(
    control_factory: Callable[..., ControlPlane],
    test_images: dict[str, str],
    users: list[str],
    local_providers: list[LocalProvider],
    dclient: docker.DockerClient,
    s3: S3,  # noqa: F811 (the fixture)
) -> None:
    control = await start_plane(
        control_factory,
        local_providers,
        1,
        backup_s3_endpoint=s3.endpoint,
        backup_s3_bucket="clawfleet-e2e",
        backup_s3_access_key=ACCESS_KEY,
        backup_s3_secret_key=SECRET_KEY,
    )
    user = new_user()
    users.append(user)
    status, _ = await control.admin("POST", "/v1/users", {"user_id": user, "subdomain": user})
    assert status == 201
    await running_on(control, user)
    sh(dclient, user, f"echo kept > {STATE}/a && mkdir -p {STATE}/d && echo x > {STATE}/d/b")
    sh(dclient, user, "sync")
    snapshot = await finished(control, user, await asked(control, user, "backups"))
    sh(dclient, user, f"echo lost > {STATE}/c && sync")  # only on the volume that goes

    lost = await delete_by_hand(control, user)
    await recover(control, user, snapshot["snapshot_id"])
    steps: list[str] = []  # each new (state, move, volume) seen: what a timeout reports

    async def recovered() -> dict[str, Any] | None:
        _, seen = await control.admin("GET", f"/v1/users/{user}")
        step = f"{seen['state']} {seen['move']} {seen['volume']}"
        if not steps or not steps[-1].endswith(step):
            steps.append(f"{time.monotonic() - began:.1f}s {step}")
        volume = await asyncio.to_thread(volume_id, control, user)
        return seen if seen["move"] is None and volume not in (None, lost) else None

    began = time.monotonic()
    try:
        await until(recovered, f"{user} recovered onto a new volume", 240)
        await container_back(dclient, user)
    except AssertionError as exc:
        _, listed = await control.admin("GET", "/v1/events?limit=200")
        happened = [f"{e['at']} {e['kind']} {e['message']}" for e in listed["events"]]
        raise AssertionError("\n".join([str(exc), *steps, *happened])) from None
    (container,) = dclient.containers.list(filters={"label": f"clawfleet.user={user}"})
    assert all(lost not in m["Source"].split("/") for m in container.attrs["Mounts"])
    assert sh(dclient, user, f"cat {STATE}/a {STATE}/d/b") == "kept\nx\n"
    assert sh(dclient, user, f"ls -A {STATE}") == "a\nd\n"
    _, listed = await control.admin("GET", "/v1/events?limit=500")
    assert "volume_recovered" in {e["kind"] for e in listed["events"]}


def volume_id(control: ControlPlane, user: str) -> str | None:
    with closing(sqlite3.connect(control.settings.database_path, timeout=10)) as conn:
        row = conn.execute("SELECT provider_id FROM volumes WHERE user_id = ?", (user,)).fetchone()
    return str(row[0]) if row and row[0] else None
