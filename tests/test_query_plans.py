"""Every query on the hot paths finds its rows through an index (issue 16).

The real Fleet runs each hot path against a migrated SQLite file with a few workers
and users: heartbeats, long-polls (the desired set), nonce insert and prune, the
liveness sweep, and placement (a user created and placed). Every statement SQLite
runs meanwhile is recorded through its trace hook and then explained; a plan step
that scans a table without an index fails the test, naming the statement. A scan
grows with the fleet on every beat or poll, which at 10k workers is the difference
between microseconds and milliseconds under the single write lock.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from agent.features import FEATURES
from control.api import admin_pages
from control.api.metrics_snapshot import metrics_snapshot
from control.db.store import Store
from control.fleet import Fleet
from control.keyring import Keyring
from control.workers.auth import AgentCaller
from shared import signing
from shared.protocol import ContainerReport, Heartbeat, RegisterRequest, Resources
from tests.fixtures import INTERNAL_SECRET, make_settings

RESOURCES = Resources(cpus=4, memory_mb=8192, disk_gb=80)
# Statements that are not queries over tables (transaction control, pragmas).
_NOT_QUERIES = re.compile(r"\s*(BEGIN|COMMIT|ROLLBACK|PRAGMA|SAVEPOINT|RELEASE)\b", re.I)
# A full scan: "SCAN users" / "SCAN u" (3.36+), or through a whole index, "SCAN u USING
# INDEX sqlite_autoindex_users_1". Only a partial index's scan is bounded by what it wants.
_SCAN = re.compile(r"^SCAN (\w+)(?: USING (?:COVERING )?INDEX (\w+))?(?: LEFT-JOIN)?$")
_SUBQUERY = re.compile(r"^(?:MATERIALIZE|CO-ROUTINE) (\w+)$")


def caller(key_id: str) -> AgentCaller:
    return AgentCaller(key_id, signing.new_nonce(), int(time.time()), b"")


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    store = Store(str(tmp_path / "clawfleet.db"))
    await store.open()
    fleet = Fleet(make_settings(tmp_path), store, Keyring(INTERNAL_SECRET))
    await fleet.start()
    try:
        yield fleet
    finally:
        await fleet.heartbeats.close()
        await store.close()


async def traced(store: Store, run: Callable[[], Awaitable[None]]) -> list[str]:
    """The statements SQLite ran (on every connection) while `run()` was awaited."""
    seen: list[str] = []
    reader = store._reader
    assert reader is not None
    await reader.set_trace_callback(seen.append)
    await store.read(lambda conn: conn.set_trace_callback(seen.append))  # Store.read's
    await store._writes.call(lambda conn: conn.set_trace_callback(seen.append))  # writes'
    try:
        await run()
    finally:
        await reader.set_trace_callback(None)
        await store.read(lambda conn: conn.set_trace_callback(None))
        await store._writes.call(lambda conn: conn.set_trace_callback(None))
    return [s for s in dict.fromkeys(seen) if not _NOT_QUERIES.match(s)]


def table_scans(db: sqlite3.Connection, statement: str) -> list[str]:
    """The plan steps of `statement` that read a whole table (directly or through a
    whole index); a subquery's own rows and a partial index's are not a table."""
    plan = [str(row[3]) for row in db.execute(f"EXPLAIN QUERY PLAN {statement}")]
    subqueries = {m.group(1) for step in plan if (m := _SUBQUERY.match(step))}
    partial = {
        str(row[0])
        for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql LIKE '%WHERE%'"
        )
    }
    return [
        step
        for step in plan
        if (m := _SCAN.match(step)) and m.group(1) not in subqueries and m.group(2) not in partial
    ]


async def hot_paths(fleet: Fleet) -> list[str]:
    workers = []
    for i in range(3):
        minted = await fleet.mint_join_token(None)
        request = RegisterRequest(1, "1.0.0", f"w{i}", RESOURCES, features=list(FEATURES))
        workers.append((await fleet.register(caller(minted.token_id), request)).worker_id)
    await fleet.create_user("alice", "alice", "default")
    alice_on = await fleet.store.fetch_one("SELECT server_id FROM users WHERE id = 'alice'")
    assert alice_on is not None and alice_on["server_id"] in workers

    async def run() -> None:
        for worker in workers:
            running = [ContainerReport("alice", "running", "healthy")]
            beat = Heartbeat("1.0.0", 1, RESOURCES, running, features=list(FEATURES))
            await fleet.heartbeat(caller(worker), beat)
            await fleet.assignments(caller(worker), 0, 0)
        await fleet.create_user("bob", "bob", "default")  # placement
        await fleet.sweep(time.time() + 3600)  # liveness (all dead by then), nonce prune

    return await traced(fleet.store, run)


async def test_no_hot_path_query_scans_a_table(fleet: Fleet) -> None:
    statements = await hot_paths(fleet)
    assert any("INSERT INTO nonces" in s for s in statements)
    assert any("DELETE FROM nonces" in s for s in statements)
    assert any("LEFT JOIN users u" in s for s in statements)  # the desired set
    with sqlite3.connect(fleet.store.path) as db:
        scans = {s: table_scans(db, s) for s in statements}
    assert {s: steps for s, steps in scans.items() if steps} == {}


@pytest.mark.parametrize(
    ("statement", "scans"),
    [
        ("SELECT id FROM users WHERE subdomain = 'x'", []),
        ("SELECT id FROM users WHERE note = 'x'", ["SCAN users"]),
        ("SELECT u.id FROM users u WHERE u.note = 'x'", ["SCAN u"]),
        (
            "SELECT s.id FROM users s LEFT JOIN users u ON u.id = s.id OR u.note = s.id",
            ["SCAN s USING COVERING INDEX sqlite_autoindex_users_1", "SCAN u LEFT-JOIN"],
        ),
        ("SELECT n FROM (SELECT COUNT(*) AS n FROM users WHERE state = 'x') v", []),
        (
            "SELECT id FROM users ORDER BY id",
            ["SCAN users USING COVERING INDEX sqlite_autoindex_users_1"],
        ),
        ("SELECT id FROM users WHERE error IS NOT NULL ORDER BY error", []),
    ],
)
def test_a_scan_is_told_from_a_search(tmp_path: Path, statement: str, scans: list[str]) -> None:
    with sqlite3.connect(tmp_path / "t.db") as db:
        db.execute(
            "CREATE TABLE users (id TEXT PRIMARY KEY, subdomain TEXT UNIQUE, error TEXT, "
            "state TEXT, note TEXT)"
        )
        db.execute("CREATE INDEX users_state ON users(state)")
        db.execute("CREATE INDEX users_error ON users(error) WHERE error IS NOT NULL")
        assert table_scans(db, statement) == scans


# The counts the database keeps (control/db/counts_schema.py): a few rows by design,
# read whole; every other table an admin read touches goes through an index.
_COUNTS = frozenset({"server_counts", "user_counts", "event_counts", "volume_counts"})


async def test_summary_and_metrics_read_counts_not_tables(fleet: Fleet) -> None:
    await hot_paths(fleet)  # a fleet with workers, users and events to count

    async def run() -> None:
        await admin_pages.summary(fleet)
        await metrics_snapshot(fleet.store)

    statements = await traced(fleet.store, run)
    assert any("FROM server_counts" in s for s in statements)
    assert any("FROM user_counts" in s for s in statements)
    with sqlite3.connect(fleet.store.path) as db:
        scans = {
            s: [step for step in table_scans(db, s) if step.split()[1] not in _COUNTS]
            for s in statements
        }
    assert {s: steps for s, steps in scans.items() if steps} == {}
