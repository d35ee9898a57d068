"""Backups end to end on one machine (issue 13, docs/backups.md): the real control plane
with USER_VOLUMES on and backups configured against a real S3 server (moto,
tests/s3server.py), the local provider running a real agent process that mounts the
user's loop-backed volume and runs the real restic. These tests run as root.

Checked: a file in the user's state, snapshotted through the admin API, then changed,
comes back as it was when the operator restores that snapshot: the container is
stopped for the restore and starts again on the restored state."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest

from control.capacity.providers.local import LocalProvider
from tests.agent.conftest import new_user
from tests.agent.test_e2e import until
from tests.agent.test_volumes_local_e2e import (
    STATE,
    running_on,
    sh,
    start_plane,
)
from tests.fixtures import ControlPlane
from tests.s3server import ACCESS_KEY, S3, SECRET_KEY, s3_server

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(
        shutil.which("restic") is None and os.environ.get("CI") != "true",
        reason="restic is not installed (apt-get install restic; .ci/run does)",
    ),
]


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with s3_server() as server:
        yield server


async def backups_of(control: ControlPlane, user: str) -> dict[str, Any]:
    status, body = await control.admin("GET", f"/v1/users/{user}/backups")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def finished(control: ControlPlane, user: str, job_id: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        jobs = {j["id"]: j for j in (await backups_of(control, user))["jobs"]}
        job = jobs.get(job_id) or {}
        return job if job.get("state") in ("done", "failed") else None

    job: dict[str, Any] = await until(check, f"backup job {job_id} finished", 180)
    assert job["state"] == "done", job
    return job


async def asked(control: ControlPlane, user: str, path: str, body: Any = None) -> str:
    """Asks for a job, once the user's earlier one (a scheduled snapshot) is over."""

    async def ask() -> str | None:
        status, reply = await control.admin("POST", f"/v1/users/{user}/{path}", body)
        if status == 409 and reply["error"]["code"] in ("backup_in_flight", "no_volume"):
            return None
        assert status == 202, reply
        return str(reply["job"]["id"])

    job_id: str = await until(ask, f"{path} of {user} accepted", 180)
    return job_id


async def container_back(dclient: docker.DockerClient, user: str) -> None:
    """The user's container runs again (the restore kept it away: the user's state on
    the control plane stays `running` meanwhile, so that is no sign)."""

    async def check() -> bool:
        found = dclient.containers.list(filters={"label": f"clawfleet.user={user}"})
        return bool(found) and found[0].status == "running"

    await until(check, f"{user}'s container back after the restore", 120)


async def test_a_restored_snapshot_brings_back_the_state_it_was_taken_of(
    control_factory: Callable[..., ControlPlane],
    test_images: dict[str, str],
    users: list[str],
    local_providers: list[LocalProvider],
    dclient: docker.DockerClient,
    s3: S3,
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
    sh(dclient, user, f"echo first > {STATE}/a && mkdir -p {STATE}/d && echo x > {STATE}/d/b")
    sh(dclient, user, "sync")
    snapshot = await finished(control, user, await asked(control, user, "backups"))
    assert snapshot["snapshot_id"]

    sh(dclient, user, f"echo second > {STATE}/a && rm -r {STATE}/d && echo new > {STATE}/c")
    restore = await asked(control, user, "restore", {"snapshot_id": snapshot["snapshot_id"]})
    await finished(control, user, restore)
    await container_back(dclient, user)
    assert sh(dclient, user, f"cat {STATE}/a {STATE}/d/b") == "first\nx\n"
    assert sh(dclient, user, f"ls -A {STATE}") == "a\nd\n"
