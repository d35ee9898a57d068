"""Volume attachment slots (issue 13) through the real app: with a volume per user, a user
placed on a server holds one of its 16 slots from the moment it is placed, before its
volume exists, so a later placement cannot take the slot its volume is about to use."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from control.plans import DEFAULT_PLAN
from tests.fixtures import ControlPlane
from tests.worker import FakeWorker

TINY = dataclasses.replace(DEFAULT_PLAN, memory_mb=64, cpus=0.01)


@pytest.mark.parametrize(("user_volumes", "placed"), [(True, 16), (False, 17)])
async def test_a_placed_users_slot_counts_before_its_volume_exists(
    control_factory: Any, user_volumes: bool, placed: int
) -> None:
    assert DEFAULT_PLAN.memory_mb > TINY.memory_mb  # memory is not what limits here
    control: ControlPlane = control_factory(plans={"default": TINY}, user_volumes=user_volumes)
    await control.start()
    status, reply = await control.admin("POST", "/v1/join-tokens")
    assert status == 201, reply
    worker = FakeWorker.with_token(control.url, control.session, reply["token"])
    assert (await worker.register("w")).status == 201
    assert (await worker.heartbeat()).status == 200
    for i in range(17):
        status, body = await control.admin(
            "POST", "/v1/users", {"user_id": f"u{i}", "subdomain": f"s{i}"}
        )
        assert status == 201, body
    _, body = await control.admin("GET", "/v1/users")
    states = [u["state"] for u in body["users"]]
    assert states.count("provisioning") == placed
    assert states.count("pending") == 17 - placed
