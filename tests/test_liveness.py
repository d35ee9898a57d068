"""Liveness with the real sweeper loop: short intervals, real waiting (bounded)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from tests.fixtures import ControlPlane
from tests.test_protocol import registered, server


async def wait_for_status(control: ControlPlane, server_id: str, wanted: str, limit: float) -> str:
    """Waits for any of the space-separated statuses in `wanted`; returns the one seen."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        status = (await server(control, server_id))["status"]
        if status in wanted.split():
            return str(status)
        await asyncio.sleep(0.2)
    raise AssertionError(f"{server_id} never became {wanted} within {limit}s")


async def test_silent_worker_goes_unhealthy_then_dead_and_its_users_are_released(
    control_factory: Callable[..., ControlPlane],
) -> None:
    control = control_factory(heartbeat_interval=0.5, dead_after=4.0)
    await control.start()
    worker = await registered(control)
    await control.admin("POST", "/v1/users", {"user_id": "dora", "subdomain": "dora"})
    _, user = await control.admin("GET", "/v1/users/dora")
    assert user["server_id"] == worker.key_id
    await wait_for_status(control, worker.key_id, "unhealthy", 10)
    # A heartbeat brings an unhealthy worker back.
    assert (await worker.heartbeat()).status == 200
    assert (await server(control, worker.key_id))["status"] == "active"
    # Dead, then deleted at the provider by the autoscaler's next run.
    await wait_for_status(control, worker.key_id, "dead deleted", 15)
    _, user = await control.admin("GET", "/v1/users/dora")
    assert user["state"] == "pending" and user["server_id"] is None
    # A dead worker is revoked: it must stop acting on its old desired set.
    reply = await worker.heartbeat()
    assert reply.status == 403
    assert reply.body["error"]["code"] == "worker_revoked"
    _, evs = await control.admin("GET", "/v1/events")
    kinds = [e["kind"] for e in evs["events"]]
    assert "worker_status" in kinds and "user_released" in kinds


async def test_restart_gives_every_worker_a_fresh_grace(
    control_factory: Callable[..., ControlPlane],
) -> None:
    control = control_factory(heartbeat_interval=0.5, dead_after=4.0)
    await control.start()
    worker = await registered(control)
    assert (await worker.heartbeat()).status == 200
    await control.stop()
    await asyncio.sleep(5)  # longer than DEAD_AFTER while the control plane is down
    await control.start()
    await asyncio.sleep(1.3)  # at least one sweep has run since the restart
    assert (await server(control, worker.key_id))["status"] != "dead"
    assert (await worker.heartbeat()).status == 200
    assert (await server(control, worker.key_id))["status"] == "active"
