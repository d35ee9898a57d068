"""The counts the database keeps by itself (control/db/counts_schema.py, read through
control/db/counts.py) equal a fresh count of the rows: after random operations through
the real API, after random writes of every kind straight into SQLite (what the API
never does: deleting a server row, a volume, an event), after the migration's backfill
of a database that already holds rows, and after a write that rolled back.

The fresh counts are made here in Python from the rows (reports parsed with `json`),
not with the triggers' SQL, so a wrong trigger cannot agree with itself.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from control.appkeys import FLEET
from control.db import migrations
from control.db.counts_schema import COUNTS_MIGRATION
from control.db.migrations import MIGRATIONS
from control.db.store import Store
from tests.fixtures import ControlPlane
from tests.test_admin_pages import container
from tests.test_protocol import registered
from tests.worker import FakeWorker

Counts = dict[str, dict[tuple[Any, ...], tuple[int, ...]]]
COUNTS_VERSION = MIGRATIONS.index(COUNTS_MIGRATION) + 1


def _errors(report: str | None) -> int:
    if not report or '"error":"' not in report:
        return 0
    containers = json.loads(report).get("containers", [])
    return sum(1 for c in containers if isinstance(c, dict) and c.get("error"))


def fresh(db: sqlite3.Connection) -> Counts:
    """The counts, from the rows themselves."""
    servers: Counter[tuple[Any, ...]] = Counter()
    errors: Counter[tuple[Any, ...]] = Counter()
    for row in db.execute(
        "SELECT status, server_type, memory_mb, cpus, cordoned, draining, report FROM servers"
    ):
        status, kind, memory, cpus, cordoned, draining, report = row
        key = (status, kind or "", -1 if memory is None else memory, -1 if cpus is None else cpus)
        key = (*key, cordoned, draining)
        servers[key] += 1
        errors[key] += _errors(report)
    users = Counter(db.execute("SELECT state, plan FROM users"))
    events = Counter(kind for (kind,) in db.execute("SELECT kind FROM events"))
    volumes: dict[tuple[Any, ...], tuple[int, ...]] = {}
    for state, size in db.execute("SELECT state, size_gb FROM volumes"):
        n, total = volumes.get((state,), (0, 0))
        volumes[(state,)] = (n + 1, total + size)
    return {
        "servers": {k: (n, errors[k]) for k, n in servers.items()},
        "users": {tuple(k): (n,) for k, n in users.items()},
        "events": {(k,): (n,) for k, n in events.items()},
        "volumes": volumes,
    }


def kept(db: sqlite3.Connection) -> Counts:
    """The counts as the database keeps them (empty groups left out)."""

    def rows(sql: str, width: int) -> dict[tuple[Any, ...], tuple[int, ...]]:
        return {tuple(r[:width]): tuple(r[width:]) for r in db.execute(sql)}

    return {
        "servers": rows(
            "SELECT status, server_type, memory_mb, cpus, cordoned, draining, n, "
            "container_errors FROM server_counts WHERE n != 0 OR container_errors != 0",
            6,
        ),
        "users": rows("SELECT state, plan, n FROM user_counts WHERE n != 0", 2),
        "events": rows("SELECT kind, n FROM event_counts WHERE n != 0", 1),
        "volumes": rows("SELECT state, n, size_gb FROM volume_counts WHERE n != 0", 1),
    }


def read(path: str) -> tuple[Counts, Counts]:
    """Both counts from one snapshot: the control plane's own loops may write between two
    reads (a sweep marking a server, a heartbeat), which is no disagreement of the counts."""
    db = sqlite3.connect(path, timeout=10, isolation_level=None)
    try:
        db.execute("BEGIN")
        return kept(db), fresh(db)
    finally:
        db.close()


async def assert_counts_true(path: str) -> Counts:
    counted, truth = await asyncio.to_thread(read, path)
    assert counted == truth
    return truth


# --- through the real API ----------------------------------------------------------------
async def random_step(
    control: ControlPlane, rng: random.Random, workers: list[FakeWorker], users: list[str]
) -> None:
    """One operation an operator or an agent may do, chosen by `rng`."""
    op = rng.choice(["worker", "user", "user", "user", "target", "server", "beat", "beat"])
    if op == "worker" or not workers:
        workers.append(await registered(control, f"w{len(workers)}"))
    elif op == "user" or not users:
        users.append(f"u{len(users)}")
        status, body = await control.admin(
            "POST", "/v1/users", {"user_id": users[-1], "subdomain": users[-1]}
        )
        assert status == 201, body
    elif op == "target":
        path = f"/v1/users/{rng.choice(users)}" + rng.choice(["/suspend", "/resume", ""])
        status, body = await control.admin("POST" if path.count("/") == 4 else "DELETE", path)
        assert status in (200, 409), body
    elif op == "server":
        action = rng.choice(["cordon", "uncordon", "drain"])
        status, body = await control.admin(
            "POST", f"/v1/servers/{rng.choice(workers).key_id}/{action}"
        )
        assert status in (200, 409), body
    else:
        worker = rng.choice(workers)
        mine = rng.sample(users, k=min(len(users), rng.randint(0, 3)))
        errors = [rng.choice([None, None, "OOMKilled", "image pull failed"]) for _ in mine]
        reply = await worker.heartbeat([container(u, e) for u, e in zip(mine, errors, strict=True)])
        assert reply.status == 200, reply.body


async def test_counts_follow_random_operations_through_the_api(control: ControlPlane) -> None:
    rng = random.Random(16)
    workers: list[FakeWorker] = []
    users: list[str] = []
    seen: list[Counts] = []
    for step in range(120):
        await random_step(control, rng, workers, users)
        if step % 20 == 19:
            seen.append(await assert_counts_true(control.settings.database_path))
    fleet = control.app[FLEET] if control.app else None
    assert fleet is not None
    await fleet.sweep(1e12)  # every worker dead: statuses change, users released
    seen.append(await assert_counts_true(control.settings.database_path))
    # The run went through the cases that matter, or the test proves little.
    assert {k[0] for c in seen for k in c["servers"]} >= {"active", "dead"}
    assert {k[4:] for c in seen for k in c["servers"]} >= {(0, 0), (1, 0), (1, 1)}
    assert max(e for c in seen for _, e in c["servers"].values()) > 0
    assert {k[0] for c in seen for k in c["users"]} >= {"pending", "provisioning", "suspended"}
    assert {k[0] for c in seen for k in c["users"]} & {"running", "deprovisioned"}
    assert seen[-1]["events"]


# --- straight into SQLite: every trigger, deletes included --------------------------------
def _report(rng: random.Random) -> str | None:
    if rng.random() < 0.2:
        return None
    containers = [
        {"user_id": f"u{i}", "state": "running", "error": rng.choice([None, "", "OOM", "x"])}
        for i in range(rng.randint(0, 4))
    ]
    return json.dumps({"containers": containers}, separators=(",", ":"))


def random_write(db: sqlite3.Connection, rng: random.Random, i: int) -> None:
    pick = rng.randrange(9)
    status = rng.choice(["provisioning", "active", "unhealthy", "dead", "deleted"])
    if pick == 0:
        db.execute(
            "INSERT INTO servers (id, name, status, origin, created_at, status_changed_at, "
            "server_type, memory_mb, cpus, cordoned, report) VALUES (?, ?, ?, 'join', 0, 0, "
            "?, ?, ?, ?, ?)",
            (f"s{i}", f"s{i}", status, rng.choice([None, "cpx22", "cx32"]),
             rng.choice([None, 4096, 8192]), rng.choice([None, 2, 4]), rng.randint(0, 1),
             _report(rng)),
        )  # fmt: skip
    elif pick == 1:
        db.execute(
            "UPDATE servers SET status = ?, draining = ?, memory_mb = ? WHERE id IN "
            "(SELECT id FROM servers ORDER BY random() LIMIT 1)",
            (status, rng.randint(0, 1), rng.choice([None, 8192])),
        )
    elif pick == 2:  # a heartbeat: the report only (its shape unchanged)
        db.execute(
            "UPDATE servers SET report = ?, last_heartbeat = ? WHERE id IN "
            "(SELECT id FROM servers ORDER BY random() LIMIT 1)",
            (_report(rng), float(i)),
        )
    elif pick == 3:
        db.execute(
            "DELETE FROM servers WHERE id IN (SELECT id FROM servers ORDER BY random() LIMIT 1)"
        )
    elif pick == 4:
        db.execute(
            "INSERT INTO users (id, subdomain, plan, state, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, 0, 0)",
            (f"u{i}", f"u{i}", rng.choice(["default", "big"]), rng.choice(["pending", "running"])),
        )
    elif pick == 5:
        db.execute(
            "UPDATE users SET state = ?, plan = ? WHERE id IN "
            "(SELECT id FROM users ORDER BY random() LIMIT 2)",
            (rng.choice(["pending", "running", "suspended"]), rng.choice(["default", "big"])),
        )
    elif pick == 6:
        db.execute("DELETE FROM users WHERE id IN (SELECT id FROM users ORDER BY random() LIMIT 1)")
    elif pick == 7:
        kind = rng.choice(["scale_up", "placed", "dead"])
        db.execute("INSERT INTO events (at, kind, message) VALUES (0, ?, '')", (kind,))
        if rng.random() < 0.3:
            db.execute("DELETE FROM events WHERE id = (SELECT MIN(id) FROM events)")
    else:
        random_volume_write(db, rng, i)


def random_volume_write(db: sqlite3.Connection, rng: random.Random, i: int) -> None:
    choice = rng.randrange(3)
    if choice == 0:
        db.execute(
            "INSERT INTO volumes (user_id, name, provider, location, size_gb, state, "
            "created_at, updated_at) VALUES (?, ?, 'hetzner', 'fsn1', ?, 'creating', 0, 0)",
            (f"v{i}", f"v{i}", rng.choice([10, 20])),
        )
    elif choice == 1:
        db.execute(
            "UPDATE volumes SET state = ?, size_gb = size_gb + ? WHERE user_id IN "
            "(SELECT user_id FROM volumes ORDER BY random() LIMIT 1)",
            (rng.choice(["attached", "detached"]), rng.choice([0, 10])),
        )
    else:
        db.execute(
            "DELETE FROM volumes WHERE user_id IN "
            "(SELECT user_id FROM volumes ORDER BY random() LIMIT 1)"
        )


async def open_store(path: Path) -> None:
    store = Store(str(path))
    await store.open()
    await store.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_counts_follow_random_writes_of_every_kind(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "c.db"
    await open_store(path)
    rng = random.Random(seed)
    with sqlite3.connect(path) as db:
        seen = []
        for i in range(400):
            random_write(db, rng, i)
            if i % 50 == 49:
                seen.append(fresh(db))
                assert kept(db) == seen[-1], f"after write {i}"
    for table in ("servers", "users", "events", "volumes"):
        assert any(c[table] for c in seen), f"{table} never had a row"


# --- the migration's backfill --------------------------------------------------------------
async def migrated_to(path: Path, version: int) -> None:
    """A database as a build with `version` migrations left it."""

    def run() -> None:
        with sqlite3.connect(path, isolation_level=None) as db:
            db.execute(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)"
            )
            for n, script in enumerate(MIGRATIONS[:version], start=1):
                for statement in migrations.statements(script):
                    db.execute(statement)
                db.execute("INSERT INTO schema_migrations VALUES (?, 0)", (n,))

    await asyncio.to_thread(run)


async def test_the_migration_counts_the_rows_already_there(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    await migrated_to(path, COUNTS_VERSION - 1)
    rng = random.Random(7)
    with sqlite3.connect(path) as db:
        for i in range(300):
            random_write(db, rng, i)
        truth = fresh(db)
    assert all(truth.values())
    await open_store(path)  # applies the counts' migration
    with sqlite3.connect(path) as db:
        assert kept(db) == truth
        random_write(db, rng, 1000)  # and the triggers keep them from there
        assert kept(db) == fresh(db)


# --- a write that rolls back ----------------------------------------------------------------
async def test_a_rolled_back_write_leaves_the_counts_as_they_were(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    store = Store(str(path))
    await store.open()

    async def writes(conn: aiosqlite.Connection) -> None:
        await conn.execute(
            "INSERT INTO servers (id, name, status, origin, created_at, status_changed_at) "
            "VALUES ('s1', 's1', 'active', 'join', 0, 0)"
        )
        await conn.execute(
            "INSERT INTO users (id, subdomain, plan, state, created_at, updated_at) "
            "VALUES ('a', 'a', 'default', 'pending', 0, 0)"
        )
        await conn.execute("INSERT INTO events (at, kind, message) VALUES (0, 'placed', '')")

    async def fails(conn: aiosqlite.Connection) -> None:
        await conn.execute("UPDATE users SET state = 'running' WHERE id = 'a'")
        await conn.execute("UPDATE servers SET status = 'dead', cordoned = 1")
        await conn.execute("DELETE FROM events")
        raise RuntimeError("the write fails after its statements ran")

    try:
        await store.write(writes)
        before = await asyncio.to_thread(read, str(path))
        assert before[0] == before[1] and before[0]["users"] == {("pending", "default"): (1,)}
        with pytest.raises(RuntimeError):
            await store.write(fails)
        assert await asyncio.to_thread(read, str(path)) == before
    finally:
        await store.close()


# --- the migration runner keeps a trigger whole ----------------------------------------------
@pytest.mark.parametrize(
    ("script", "statements"),
    [
        ("CREATE TABLE a (x); CREATE TABLE b (y);", ["CREATE TABLE a (x)", "CREATE TABLE b (y)"]),
        ("\n    \n", []),
        (
            "CREATE TRIGGER t AFTER INSERT ON a BEGIN INSERT INTO b VALUES (1); "
            "DELETE FROM b; END; CREATE INDEX i ON a(x);",
            [
                "CREATE TRIGGER t AFTER INSERT ON a BEGIN INSERT INTO b VALUES (1); "
                "DELETE FROM b; END",
                "CREATE INDEX i ON a(x)",
            ],
        ),
        ("INSERT INTO a VALUES ('x;y');", ["INSERT INTO a VALUES ('x;y')"]),
        (
            "CREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1;",
            ["CREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1"],
        ),
    ],
)
def test_migration_statements_keep_a_triggers_body(script: str, statements: list[str]) -> None:
    assert migrations.statements(script) == statements
