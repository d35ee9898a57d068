"""The store's contract (control/db/store.py) on both backends: SQLite and a real
PostgreSQL (control/db/postgres.py, tests/postgres_server.py). The tests that only
make sense for one backend (file modes and the lock file for SQLite; advisory locks,
dropped connections and replicas for PostgreSQL) say so in their names."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import psycopg
import pytest

from control.db.migrations import MIGRATIONS
from control.db.postgres import PostgresStore
from control.db.store import Store, StoreUnavailable, fetch_one

AnyStore = Store | PostgresStore


class Backend(Protocol):
    name: str

    def store(self) -> AnyStore: ...
    def commit_elsewhere(self, sql: str) -> None: ...


class SqliteBackend:
    name = "sqlite"

    def __init__(self, tmp_path: Path) -> None:
        self.path = str(tmp_path / "db.sqlite")

    def store(self) -> AnyStore:
        return Store(self.path)

    def commit_elsewhere(self, sql: str) -> None:
        with contextlib.closing(sqlite3.connect(self.path, isolation_level=None)) as db:
            db.execute(sql)


class PostgresBackend:
    name = "postgres"

    def __init__(self, url: str) -> None:
        self.url = url

    def store(self) -> AnyStore:
        return PostgresStore(self.url)

    def commit_elsewhere(self, sql: str) -> None:
        with contextlib.closing(psycopg.connect(self.url, autocommit=True)) as db:
            db.execute(sql)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return SqliteBackend(tmp_path)
    return PostgresBackend(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[AnyStore]:
    opened = backend.store()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


EVENT = "INSERT INTO events (at, kind, message) VALUES (?, ?, ?)"


async def test_migrations_are_recorded_and_idempotent(backend: Backend) -> None:
    for _ in range(2):
        store = backend.store()
        await store.open()
        rows = await store.fetch_all("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == list(range(1, len(MIGRATIONS) + 1))
        await store.close()


async def test_newer_schema_refuses_to_start(backend: Backend) -> None:
    store = backend.store()
    await store.open()
    await store.write(lambda c: c.execute("INSERT INTO schema_migrations VALUES (999, 0)"))
    await store.close()
    with pytest.raises(StoreUnavailable, match="newer than this build") as refused:
        await backend.store().open()
    assert refused.value.code == "schema_too_new"


async def test_failed_write_rolls_back_everything(store: AnyStore) -> None:
    async def half(conn: aiosqlite.Connection) -> None:
        await conn.execute(EVENT, (1, "a", "first"))
        raise ValueError("boom")

    with pytest.raises(ValueError):
        await store.write(half)
    assert await store.fetch_all("SELECT * FROM events") == []
    await store.close()
    await store.close()  # safe twice


async def test_rows_and_cursors_answer_as_sqlite_s(store: AnyStore) -> None:
    async def fn(conn: aiosqlite.Connection) -> dict[str, Any]:
        await conn.executemany(EVENT, [(1.5, "a", "x"), (2, "b", "50% off"), (3, "b", "y")])
        inserted = await conn.execute(EVENT, (4, "c", "z"))
        nothing = await inserted.fetchone()
        async with conn.execute("UPDATE events SET at = at + 1 WHERE kind = ?", ("b",)) as cur:
            updated = cur.rowcount
        async with conn.execute("SELECT COUNT(*), MAX(at) AS top FROM events") as cur:
            row = await cur.fetchone()
        assert row is not None
        found = await fetch_one(conn, "SELECT kind FROM events WHERE message LIKE '%off'")
        return {"nothing": nothing, "updated": updated, "row": tuple(row), "top": row["top"],
                "found": found and found["kind"]}  # fmt: skip

    seen = await store.write(fn)
    assert seen == {"nothing": None, "updated": 2, "row": (4, 4.0), "top": 4.0, "found": "b"}
    row = await store.fetch_one(
        "SELECT kind, SUM(at) AS total, COUNT(*) AS n FROM events WHERE kind = ? GROUP BY kind",
        ("b",),
    )
    assert row is not None
    assert (row[0], row["kind"], row.keys(), dict(row)) == (
        "b", "b", ["kind", "total", "n"], {"kind": "b", "total": 7.0, "n": 2},
    )  # fmt: skip
    (n,) = await store.fetch_all("SELECT COUNT(*) FROM events")
    assert list(n) == [4] and type(n[0]) is int
    # SUM over PostgreSQL's BIGINT is NUMERIC: it comes back an int, as SQLite's SUM does;
    # a bool goes in as SQLite stores it, 0 or 1.
    sums = await store.fetch_one("SELECT SUM(id) AS ids, ? + 1 AS two FROM events", (True,))
    assert sums is not None and (sums["ids"], sums["two"]) == (10, 2)
    assert type(sums["ids"]) is int


async def test_a_read_function_sees_one_snapshot_in_one_thread_and_cannot_write(
    backend: Backend, store: AnyStore
) -> None:
    await store.write(lambda c: c.execute(EVENT, (1, "a", "x")))
    threads: set[str] = set()

    def count(conn: Any) -> int:
        threads.add(threading.current_thread().name)
        return int(conn.execute("SELECT COUNT(*) FROM events WHERE at > ?", (0,)).fetchone()[0])

    def around_a_commit(conn: Any) -> tuple[int, int]:
        before = count(conn)
        backend.commit_elsewhere("INSERT INTO events (at, kind, message) VALUES (2, 'b', 'y')")
        return before, count(conn)

    assert await store.read(around_a_commit) == (1, 1)  # one snapshot
    assert await store.read(count) == 2  # the next read sees the commit
    ats = await store.read(lambda c: [tuple(r) for r in c.execute("SELECT at FROM events")])
    assert sorted(ats) == [(1.0,), (2.0,)]  # a cursor iterates over its rows
    assert len(threads) == 1 and threading.current_thread().name not in threads

    def writes(conn: Any) -> None:
        conn.execute("DELETE FROM events")

    with pytest.raises(StoreUnavailable, match=r"read-?only"):
        await store.read(writes)
    assert await store.read(count) == 2
    await store.close()
    [name] = threads
    assert name not in {t.name for t in threading.enumerate()}  # its thread ended
    with pytest.raises(RuntimeError, match="not open"):
        await store.read(count)


async def bump(conn: aiosqlite.Connection) -> None:
    async with conn.execute("SELECT COUNT(*) FROM events") as cur:
        (n,) = await cur.fetchone()  # type: ignore[misc]
    # On PostgreSQL each statement suspends the write (a trip to the server): another
    # writer's chance to interleave. SQLite's write never suspends (its own test).
    await conn.execute(EVENT, (n, "n", str(n)))


async def test_writes_never_interleave(store: AnyStore) -> None:
    await asyncio.gather(*(store.write(bump) for _ in range(50)))
    rows = await store.fetch_all("SELECT at FROM events ORDER BY id")
    assert [int(r["at"]) for r in rows] == list(range(50))


async def test_commit_hooks_see_the_write_roll_it_back_and_run_after_commit(
    store: AnyStore,
) -> None:
    seen: list[tuple[str, int]] = []

    async def hook(conn: aiosqlite.Connection) -> Callable[[], None] | None:
        row = await fetch_one(conn, "SELECT COUNT(*) AS n FROM events")
        n = int(row["n"]) if row else -1
        if n > 1:
            raise ValueError("two is too many")
        return lambda: seen.append(("after", n))

    store.add_commit_hook(hook)
    await store.write(lambda c: c.execute(EVENT, (1, "a", "x")))
    with pytest.raises(ValueError, match="too many"):
        await store.write(lambda c: c.execute(EVENT, (2, "a", "y")))
    assert seen == [("after", 1)]  # the rolled-back write ran nothing after
    assert [r["at"] for r in await store.fetch_all("SELECT at FROM events")] == [1]


async def test_data_version_moves_only_for_another_connection_s_commits(
    backend: Backend, store: AnyStore
) -> None:
    version = await store.data_version()
    for i in range(3):
        await store.write(lambda c, i=i: c.execute(EVENT, (i, "own", "x")))
    assert await store.data_version() == version
    if backend.name == "postgres":
        other = backend.store()  # another replica's writes
        await other.open()
        await other.write(lambda c: c.execute(EVENT, (9, "other", "x")))
        await other.close()
    else:
        backend.commit_elsewhere("INSERT INTO events (at, kind, message) VALUES (9, 'o', 'x')")
    assert await store.data_version() != version


async def test_errors_in_the_sql_or_the_data_stay_what_they_are(store: AnyStore) -> None:
    errors = (sqlite3.Error, psycopg.Error)
    for sql in ("INSERT INTO schema_migrations VALUES (1, 0)", "INSERT INTO nope VALUES (1)"):
        with pytest.raises(errors) as raised:
            await store.write(lambda c, sql=sql: c.execute(sql))
        assert not isinstance(raised.value, StoreUnavailable)
    assert store.failure is None
    await store.probe()
