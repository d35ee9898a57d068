"""The real control plane (127.0.0.1, a real SQLite file) and the singletons' lease: on a
fresh database it leads from start-up; started while another holder's lease is live, it
runs no autoscaler and no sweep, says so on /readyz and /metrics, and takes over once
that lease has lapsed."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from control.app import create_app
from control.appkeys import FLEET, LEADERSHIP, SCALER, STORE
from control.db.store import Store
from control.leadership import lease
from control.leadership.leadership import LEASE
from tests.fixtures import ControlPlane, make_settings

WAIT = 60.0
SWEEPS = "singleton-liveness-sweeps"


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT:.0f} s: {what}"
        await asyncio.sleep(0.05)


def sweeping() -> bool:
    return any(task.get_name() == SWEEPS and not task.done() for task in asyncio.all_tasks())


SINGLETONS_GAUGES = {  # set only by the singletons' runs: none on a follower
    "clawfleet_autoscaler_held_back_servers",
    "clawfleet_dns_rounds",
    "clawfleet_dns_changes",
    "clawfleet_dns_errors",
    "clawfleet_provider_rate_limit_remaining",
}


async def scrape(plane: ControlPlane) -> list[str]:
    async with plane.session.get(plane.url + "/metrics") as r:
        assert r.status == 200
        return (await r.text()).splitlines()


async def leader_metric(plane: ControlPlane) -> str:
    return next(line for line in await scrape(plane) if line.startswith("clawfleet_leader "))


async def singletons_gauges(plane: ControlPlane) -> set[str]:
    names = {line.split("{")[0].split(" ")[0] for line in await scrape(plane) if line[:1] != "#"}
    assert "clawfleet_servers" in names  # the fleet's own gauges, on every replica
    return names & SINGLETONS_GAUGES


async def leader_check(plane: ControlPlane) -> str:
    async with plane.session.get(plane.url + "/readyz") as r:
        body = await r.json()
    assert body["checks"]["leader"]["ok"] is True, body
    return str(body["checks"]["leader"]["detail"])


async def test_on_a_fresh_database_the_control_plane_leads_from_start_up(
    control: ControlPlane,
) -> None:
    assert control.app is not None
    leadership = control.app[LEADERSHIP]
    assert leadership.term is not None and leadership.term.epoch == 1
    assert sweeping()
    await until(lambda: control.app is not None and control.app[SCALER].state.runs >= 1, "a run")
    assert await leader_metric(control) == "clawfleet_leader 1.0"
    assert "this replica leads" in await leader_check(control)


async def hold_elsewhere(database: str) -> None:
    """Another replica's lease, live for an hour, written before this one starts."""
    store = Store(database)
    await store.open()
    try:
        take = functools.partial(lease.take, name=LEASE, me="other", now=time.time(), ttl=3600)
        await store.write(take)
    finally:
        await store.close()


def lapse(database: str) -> None:
    """The other holder stopped renewing and its lease ran out."""
    with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as db:
        db.execute("UPDATE leases SET expires_at = ?", (time.time() - 1,))


async def test_a_live_lease_of_another_holder_holds_the_singletons_until_it_lapses(
    control_factory: Callable[..., ControlPlane], tmp_path: Path
) -> None:
    plane = control_factory(leader_lease_ttl=3)  # looks again every second
    await hold_elsewhere(plane.settings.database_path)
    await plane.start()
    assert plane.app is not None
    app, leadership = plane.app, plane.app[LEADERSHIP]
    # The scheduler's first autoscaler run is due at start-up: it is refused, twice over.
    await until(lambda: leadership.refused >= 1 and leadership.attempts >= 2, "a refused run")
    assert leadership.term is None
    assert app[SCALER].state.runs == 0
    assert not sweeping()
    assert await leader_metric(plane) == "clawfleet_leader 0.0"
    assert await singletons_gauges(plane) == set()  # not zeros, that would read as the fleet's
    assert (await leader_check(plane)).startswith("other leads, epoch 1")

    lapse(plane.settings.database_path)
    await until(lambda: leadership.term is not None, "the take-over")
    assert leadership.term is not None and leadership.term.epoch == 2
    await until(lambda: app[SCALER].state.runs >= 1, "an autoscaler run by the new leader")
    assert sweeping()
    assert await leader_metric(plane) == "clawfleet_leader 1.0"
    assert await singletons_gauges(plane) == SINGLETONS_GAUGES
    with contextlib.closing(sqlite3.connect(plane.settings.database_path)) as db:
        kinds = [
            row[0] for row in db.execute("SELECT message FROM events WHERE kind = 'leader_elected'")
        ]
    assert len(kinds) == 2 and "epoch 2" in kinds[-1], kinds


async def test_a_restart_after_a_crash_leads_at_once_on_sqlite(
    control_factory: Callable[..., ControlPlane],
) -> None:
    """SQLite's lock file admits one process per database, so a restarted control plane
    is the same holder and renews the lease its crashed predecessor left live."""
    plane = control_factory()
    await plane.start()
    assert plane.app is not None
    holder = plane.app[LEADERSHIP].holder
    await plane.stop()
    with contextlib.closing(
        sqlite3.connect(plane.settings.database_path, isolation_level=None)
    ) as db:
        # As a kill -9 leaves it: live for a long while, never released.
        db.execute("UPDATE leases SET expires_at = ?", (time.time() + 3600,))
    await plane.start()
    assert plane.app is not None
    leadership = plane.app[LEADERSHIP]
    assert leadership.holder == holder
    assert leadership.term is not None and leadership.term.epoch == 1
    assert sweeping()


def test_replicas_on_postgresql_are_each_their_own_holder(tmp_path: Path) -> None:
    """The stable SQLite holder must never reach a shared database: two replicas with
    one id would both lead."""
    url = "postgresql://clawfleet@127.0.0.1:5432/fleet"
    sqlite = [create_app(make_settings(tmp_path)) for _ in range(2)]
    shared = [create_app(make_settings(tmp_path, database_url=url)) for _ in range(2)]
    assert sqlite[0][LEADERSHIP].holder == sqlite[1][LEADERSHIP].holder
    assert shared[0][LEADERSHIP].holder != shared[1][LEADERSHIP].holder


async def test_a_follower_sizes_its_heartbeat_interval_from_the_whole_fleet(
    control_factory: Callable[..., ControlPlane],
) -> None:
    """The liveness sweep is the leader's; a follower still hands out the interval the
    whole fleet needs (its replica-local refresh reads the live count), not the one its
    start-up count gave: else its half of a 10k fleet beats every 10 s instead of 50."""
    plane = control_factory(leader_lease_ttl=3, heartbeat_interval=1.0, dead_after=600.0)
    await hold_elsewhere(plane.settings.database_path)
    await plane.start()
    assert plane.app is not None
    app = plane.app
    assert app[LEADERSHIP].term is None and app[FLEET].interval() < 1.5
    now = time.time()
    rows = [
        (f"srv-{i}", f"w-{i}", "active", "provider", now, now, now) for i in range(1000)
    ]  # 1000 live workers: 5 s at 200 heartbeats a second

    async def register_elsewhere(conn: Any) -> None:
        await conn.executemany(
            "INSERT INTO servers (id, name, status, origin, created_at, status_changed_at, "
            "last_heartbeat) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    await app[STORE].write(register_elsewhere)  # as the leader's registrations land
    await until(lambda: app[FLEET].interval() > 4.0, "the interval sized for 1000 workers")
    assert app[LEADERSHIP].term is None  # still a follower: no sweep ran
    assert not sweeping()


async def test_a_fleet_past_the_longest_interval_is_said_once_in_the_log(
    control_factory: Callable[..., ControlPlane], caplog: pytest.LogCaptureFixture
) -> None:
    """Past MAX_HEARTBEATS_PER_SECOND x DEAD_AFTER / 4 workers the interval stops
    stretching and heartbeats come faster than the control plane paces them (issue 16:
    on 2 cores this was the knee): the operator reads it once, with what to change."""
    plane = control_factory(heartbeat_interval=1.0, dead_after=20.0)  # longest: 5 s
    await plane.start()
    assert plane.app is not None
    app = plane.app
    now = time.time()
    rows = [(f"srv-{i}", f"w-{i}", "active", "provider", now, now, now) for i in range(1500)]

    async def register(conn: Any) -> None:
        await conn.executemany(
            "INSERT INTO servers (id, name, status, origin, created_at, status_changed_at, "
            "last_heartbeat) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    caplog.set_level(logging.INFO, logger="control.fleet")
    await app[STORE].write(register)
    fleet = app[FLEET]
    for _ in range(2):  # a second refresh says nothing more
        await fleet.refresh_local(time.time())
    said = [r for r in caplog.records if "heartbeats a second" in r.getMessage()]
    assert [(r.levelname, r.getMessage()) for r in said] == [
        (
            "WARNING",
            "1500 live workers send 300 heartbeats a second, over the 200 the control "
            "plane paces them to: the interval is at its longest (5 s, a quarter of "
            "DEAD_AFTER); raise DEAD_AFTER, or give the control plane more CPU",
        )
    ]
    await app[STORE].write(lambda conn: conn.execute("UPDATE servers SET status = 'dead'"))
    await fleet.refresh_local(time.time())
    assert "back within 200 a second" in caplog.records[-1].getMessage()
