"""The dashboard's reads never queue behind the loops' reads (issue 16).

The liveness sweep, the autoscaler and the other loops read through the store's shared
read connection (`fetch_all`/`fetch_one`), one statement after another on its thread.
An admin request's reads run apart, on `Store.read`'s thread
(control/db/read_thread.py `reads_apart`): here a statement holds the shared connection
until the test lets it go, and every read an open dashboard makes is answered meanwhile.
Real SQLite and a real control plane; the hold is a SQL function waiting on an event.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from control.appkeys import FLEET
from control.db.read_thread import reads_apart
from control.db.store import Store, StoreUnavailable
from tests.fixtures import ControlPlane
from tests.test_protocol import registered

DEADLINE = 60.0  # generous: CI runs two workers on two busy cores


class Hold:
    """A statement that holds the shared read connection until `release()`."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()

    def __call__(self) -> int:  # runs on the connection's thread, inside SQLite
        self.entered.set()
        self.released.wait(DEADLINE * 2)
        return 1

    def release(self) -> None:
        self.released.set()


DASHBOARD = (
    "/v1/summary",
    "/v1/servers?limit=50&status=provisioning,active,unhealthy,dead,deleting",
    "/v1/users?state=pending&limit=50",
    "/v1/users?limit=50",
    "/v1/servers?limit=50",
)


async def test_the_dashboards_reads_are_answered_while_the_shared_read_connection_is_held(
    control: ControlPlane,
) -> None:
    worker = await registered(control)
    status, _ = await control.admin("POST", "/v1/users", {"user_id": "alice", "subdomain": "alice"})
    assert status in (200, 201)
    store = control.app[FLEET].store
    assert store._reader is not None
    hold = Hold()
    await store._reader.create_function("hold", 0, hold)
    statement = asyncio.create_task(store.fetch_one("SELECT hold()"))
    try:
        assert await asyncio.to_thread(hold.entered.wait, DEADLINE), "the hold never ran"
        pages = await asyncio.wait_for(
            asyncio.gather(*(control.admin("GET", path) for path in DASHBOARD)), DEADLINE
        )
        async with control.session.get(control.url + "/metrics") as r:
            metrics = (r.status, await r.text())
        assert not statement.done()  # all of it answered while the connection was held
    finally:
        hold.release()  # even when the test failed: nothing may stay blocked
        await asyncio.wait_for(statement, DEADLINE)
    assert [status for status, _ in pages] == [200] * len(DASHBOARD)
    summary, servers = pages[0][1], pages[1][1]
    assert summary["servers"]["live"] == 1 and summary["users"]["total"] == 1
    assert [s["id"] for s in servers["servers"]] == [worker.key_id]
    assert [u["user_id"] for u in pages[3][1]["users"]] == ["alice"]
    assert metrics[0] == 200 and "clawfleet" in metrics[1]


async def test_reads_apart_run_on_the_read_thread_and_only_inside(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "db.sqlite"))
    await store.open()
    try:
        reader, shared_seen, apart_seen = store._reader, [], []  # type: ignore[var-annotated]
        assert reader is not None
        await reader.set_trace_callback(shared_seen.append)
        await store.read(lambda conn: conn.set_trace_callback(apart_seen.append))
        await store.fetch_all("SELECT 1")
        with reads_apart():
            rows, row = await asyncio.gather(
                store.fetch_all("SELECT 2 AS n"), store.fetch_one("SELECT 3 AS n")
            )
            with pytest.raises(StoreUnavailable, match="readonly"):  # the thread only reads
                await store.fetch_all("DELETE FROM events")
        await store.fetch_all("SELECT 4")  # the mark ended with the block
        await reader.set_trace_callback(None)
        assert [r["n"] for r in rows] == [2] and row is not None and row["n"] == 3
        assert isinstance(row, sqlite3.Row)
        assert shared_seen == ["SELECT 1", "SELECT 4"]
        assert {"SELECT 2 AS n", "SELECT 3 AS n"} <= set(apart_seen)
    finally:
        await store.close()
