"""Liveness through the real app and SQLite file. The sweep runs at an injected
`now` and time spent down is written into the database: nothing waits."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import Callable

from control.appkeys import FLEET
from control.fleet import Fleet
from control.workers import liveness
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


def test_the_sweeps_filter_returns_every_worker_whose_status_changes() -> None:
    """The sweep reads only the candidates SQLite finds (liveness.CANDIDATES_SQL); every
    row `next_status` would change must be among them, boundaries included."""
    rng = random.Random(16)
    now, started, dead_after = 1_800_000_000.0, 1_799_999_000.0, 300.0
    db = sqlite3.connect(":memory:")
    db.execute(
        "CREATE TABLE servers (id TEXT, status TEXT, last_heartbeat REAL, "
        "registered_at REAL, heartbeat_interval REAL)"
    )
    rows = []
    for i in range(3000):
        interval = rng.choice([None, 10.0, 37.5, 75.0])
        edge = rng.choice([dead_after, 3 * (interval or 75.0), 0.0, rng.uniform(0, 400)])
        seen = now - edge + rng.choice([-1e-7, 0.0, 1e-7, 0.5, -0.5])
        heartbeat = rng.choice([seen, None])
        registered = rng.choice([seen, None, started - 5]) if heartbeat is None else seen - 1
        status = rng.choice(["active", "unhealthy", "dead", "provisioning"])
        rows.append((f"s{i}", status, heartbeat, registered, interval))
    db.executemany("INSERT INTO servers VALUES (?, ?, ?, ?, ?)", rows)
    params = (now, started, dead_after, dead_after / 4)
    candidates = {r[0] for r in db.execute(liveness.CANDIDATES_SQL, params)}
    changed = {
        sid
        for sid, status, heartbeat, registered, interval in rows
        if liveness.next_status(
            status,
            heartbeat or registered or 0.0,
            now,
            interval=interval or dead_after / 4,
            dead_after=dead_after,
            started_at=started,
        )
        != status
    }
    assert changed and changed <= candidates
    assert len(candidates) < len(rows) / 2  # and it does filter
