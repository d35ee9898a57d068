"""A move to another location through a backup and a restore, end to end on one machine
(issue 13, docs/backups.md): the real control plane with USER_VOLUMES on, backups against
a real S3 server (moto, tests/s3server.py), and the local provider in two locations
(LOCAL_LOCATIONS) running two real agents that mount loop-backed volumes and run the
real restic. These tests run as root.

Checked: a file written on the user's volume in location `local` is there after the
operator moves the user to a worker in `local-b`, on a new volume in that location; the
old volume is gone from the provider once the user runs there."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import docker
import pytest

from control.appkeys import SCALER
from control.capacity.providers.local import LocalProvider
from tests.agent.conftest import new_user
from tests.agent.test_backups_local_e2e import s3  # noqa: F401 (a fixture)
from tests.agent.test_e2e import until
from tests.agent.test_volumes_local_e2e import (
    STATE,
    active_servers,
    running_on,
    sh,
    start_plane,
)
from tests.fixtures import ControlPlane
from tests.s3server import ACCESS_KEY, S3, SECRET_KEY

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(
        shutil.which("restic") is None and os.environ.get("CI") != "true",
        reason="restic is not installed (apt-get install restic; .ci/run does)",
    ),
]


async def user_view(control: ControlPlane, user: str) -> dict[str, Any]:
    status, body = await control.admin("GET", f"/v1/users/{user}")
    assert status == 200, body
    return body


async def test_a_move_to_another_location_brings_the_users_files_along(
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
        2,
        local_locations=("local", "local-b"),
        backup_s3_endpoint=s3.endpoint,
        backup_s3_bucket="clawfleet-e2e",
        backup_s3_access_key=ACCESS_KEY,
        backup_s3_secret_key=SECRET_KEY,
    )
    user = new_user()
    users.append(user)
    status, _ = await control.admin("POST", "/v1/users", {"user_id": user, "subdomain": user})
    assert status == 201
    first = await running_on(control, user)
    assert (await user_view(control, user))["volume"]["location"] == "local"
    sh(dclient, user, f"echo moved > {STATE}/a && mkdir {STATE}/d && echo x > {STATE}/d/b")
    sh(dclient, user, "sync")

    # A worker in the other location, as the autoscaler makes one for a user waiting there.
    assert control.app is not None
    assert await control.app[SCALER].provisioner.create_one("the move's target", "local-b")
    servers = {s["id"]: s for s in await active_servers(control, 2)}
    (second,) = [sid for sid in servers if sid != first]
    assert servers[second]["location"] == "local-b"

    status, body = await control.admin("POST", f"/v1/users/{user}/move", {"location": "local-b"})
    assert status == 200, body
    assert body["server_id"] == second and body["move"]["phase"] == "stopping"

    steps: list[str] = []  # each new (state, move, error) seen: what a timeout reports

    async def moved() -> dict[str, Any] | None:
        seen = await user_view(control, user)
        step = f"{seen['state']} {seen['move']} {seen['error']} {seen['volume']}"
        if not steps or not steps[-1].endswith(step):
            steps.append(f"{time.monotonic() - began:.1f}s {step}")
        done = seen["state"] == "running" and seen["move"] is None
        return seen if done and seen["server_id"] == second else None

    began = time.monotonic()
    try:
        seen: dict[str, Any] = await until(moved, f"{user} moved to local-b with its data", 240)
    except AssertionError as exc:
        _, listed = await control.admin("GET", "/v1/events?limit=200")
        happened = [
            f"{e['at']} {e['kind']} {e['user_id']} {e['message']}" for e in listed["events"]
        ]
        raise AssertionError("\n".join([str(exc), *steps, *happened])) from None
    assert seen["volume"]["location"] == "local-b"
    assert sh(dclient, user, f"cat {STATE}/a {STATE}/d/b") == "moved\nx\n"
    (provider,) = local_providers
    records = [json.loads(p.read_text()) for p in (provider.root / "volumes").glob("*.json")]
    assert [r["location"] for r in records] == ["local-b"]  # the old one is deleted
    _, listed = await control.admin("GET", "/v1/events?limit=500")
    assert "user_relocated" in {e["kind"] for e in listed["events"]}
