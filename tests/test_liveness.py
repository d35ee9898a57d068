"""Liveness through the real app and SQLite file. The sweep runs at an injected
`now` and time spent down is written into the database: nothing waits."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable

from control.appkeys import FLEET
from control.fleet import Fleet
from tests.fixtures import ControlPlane
from tests.test_protocol import registered, server


def fleet(control: ControlPlane) -> Fleet:
    assert control.app is not None
    return control.app[FLEET]


def backdate(control: ControlPlane, seconds: float) -> None:
    """Every worker was last heard from `seconds` ago."""
    with sqlite3.connect(control.settings.database_path, timeout=10) as db:
        then = time.time() - seconds
        db.execute("UPDATE servers SET last_heartbeat = ?, registered_at = ?", (then, then))


async def test_silent_worker_goes_unhealthy_then_dead_and_its_users_are_released(
    control: ControlPlane,
) -> None:
    worker = await registered(control)
    await control.admin("POST", "/v1/users", {"user_id": "dora", "subdomain": "dora"})
    _, user = await control.admin("GET", "/v1/users/dora")
    assert user["server_id"] == worker.key_id
    interval = (await server(control, worker.key_id))["heartbeat_interval"]
    await fleet(control).sweep(now=time.time() + 3 * interval + 1)
    assert (await server(control, worker.key_id))["status"] == "unhealthy"
    # A heartbeat brings an unhealthy worker back.
    assert (await worker.heartbeat()).status == 200
    assert (await server(control, worker.key_id))["status"] == "active"
    await fleet(control).sweep(now=time.time() + control.settings.dead_after + 1)
    # Dead, and then deleted by the autoscaler run its released user asks for.
    assert (await server(control, worker.key_id))["status"] in ("dead", "deleting", "deleted")
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
    control = control_factory()
    await control.start()
    worker = await registered(control)
    assert (await worker.heartbeat()).status == 200
    await control.stop()
    # Down for longer than DEAD_AFTER: when it is back, every heartbeat is that old.
    await asyncio.to_thread(backdate, control, control.settings.dead_after + 100)
    await control.start()
    await fleet(control).sweep()
    assert (await server(control, worker.key_id))["status"] == "active"
    assert (await worker.heartbeat()).status == 200
    assert (await server(control, worker.key_id))["status"] == "active"


async def test_a_worker_without_an_interval_does_not_stop_the_sweep_for_the_others(
    control: ControlPlane,
) -> None:
    """A live row with no interval (written by hand, as bench/heartbeats.py inserts its
    workers) made every sweep fail: no worker could be found dead or counted."""
    silent, nulled = await registered(control, "w1"), await registered(control, "w2")

    def null_interval() -> None:  # off the loop: the app may be writing meanwhile
        with sqlite3.connect(control.settings.database_path, timeout=10) as db:
            db.execute(
                "UPDATE servers SET heartbeat_interval = NULL WHERE id = ?", (nulled.key_id,)
            )

    await asyncio.to_thread(null_interval)
    interval = (await server(control, silent.key_id))["heartbeat_interval"]
    await fleet(control).sweep(now=time.time() + 3 * interval + 1)
    assert (await server(control, silent.key_id))["status"] == "unhealthy"
    # Without one, the longest interval any worker is handed: not missed three times yet.
    assert (await server(control, nulled.key_id))["status"] == "active"
