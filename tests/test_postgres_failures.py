"""What only the PostgreSQL store has: several processes on one database (writers kept
apart by the advisory write lock, migrations applied once by replicas starting at
once), a server that drops connections or refuses writes (StoreUnavailable, then
recovery), and a server that is not there."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import aiosqlite
import psycopg
import pytest

from control.db.migrations import MIGRATIONS
from control.db.postgres import PostgresStore
from control.db.store import StoreUnavailable
from tests.ports import free_port
from tests.test_postgres_store import EVENT, bump


def terminate_others(url: str) -> int:
    """Ends every other session on the database, as a server restart does."""
    with contextlib.closing(psycopg.connect(url, autocommit=True)) as db:
        row = db.execute(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
        return int(row[0]) if row else 0


async def test_replicas_starting_at_once_apply_each_migration_once(postgres_url: str) -> None:
    replicas = [PostgresStore(postgres_url) for _ in range(3)]
    await asyncio.gather(*(r.open() for r in replicas))
    try:
        rows = await replicas[0].fetch_all("SELECT version FROM schema_migrations ORDER BY 1")
        assert [r["version"] for r in rows] == list(range(1, len(MIGRATIONS) + 1))
    finally:
        for replica in replicas:
            await replica.close()


async def test_writes_of_two_processes_never_interleave(postgres_url: str) -> None:
    first, second = PostgresStore(postgres_url), PostgresStore(postgres_url)
    await first.open()
    await second.open()
    try:
        await asyncio.gather(*(s.write(bump) for _ in range(25) for s in (first, second)))
        rows = await first.fetch_all("SELECT at FROM events ORDER BY id")
        assert [int(r["at"]) for r in rows] == list(range(50))
    finally:
        await first.close()
        await second.close()


async def test_a_dropped_connection_is_unavailable_once_then_opened_again(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        assert terminate_others(postgres_url) == 3  # writer, reader, read thread
        with pytest.raises(StoreUnavailable, match="terminat") as refused:
            await store.write(lambda c: c.execute(EVENT, (1, "a", "x")))
        assert (refused.value.status, refused.value.code) == (503, "store_unavailable")
        assert store.failure is not None
        with pytest.raises(StoreUnavailable):
            await store.fetch_all("SELECT 1")
        with pytest.raises(StoreUnavailable):
            await store.read(lambda c: c.execute("SELECT 1").fetchone())
        await store.write(lambda c: c.execute(EVENT, (2, "a", "y")))  # connected again
        assert store.failure is None
        assert [r["at"] for r in await store.fetch_all("SELECT at FROM events")] == [2]
        assert await store.read(lambda c: c.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        lines = [r.getMessage() for r in caplog.records if r.name == "control.db.postgres"]
        assert sum("writes are failing" in line for line in lines) == 1
        assert sum("writes succeed again" in line for line in lines) == 1
    finally:
        await store.close()


async def test_a_read_only_database_fails_writes_and_the_probe(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    await store.open()

    async def read_only_from_now_on(conn: aiosqlite.Connection) -> None:
        await conn.execute("SET SESSION default_transaction_read_only = on")

    try:
        await store.write(read_only_from_now_on)
        with pytest.raises(StoreUnavailable, match="read-only transaction"):
            await store.write(lambda c: c.execute(EVENT, (1, "a", "x")))
        with pytest.raises(StoreUnavailable):
            await store.probe()
        assert store.failure is not None and "read-only" in store.failure
    finally:
        await store.close()


async def test_a_server_that_is_not_there_is_unavailable_and_leaves_nothing_open() -> None:
    threads = set(threading.enumerate())
    url = f"postgresql://clawfleet:s3cret-password@127.0.0.1:{free_port()}/fleet"
    store = PostgresStore(url)
    with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:\d+/fleet") as refused:
        await store.open()
    assert refused.value.code == "store_unavailable"
    assert "s3cret" not in refused.value.message
    with pytest.raises(RuntimeError, match="not open"):
        await store.fetch_all("SELECT 1")
    assert set(threading.enumerate()) <= threads
