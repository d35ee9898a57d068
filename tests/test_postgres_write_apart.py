"""`PostgresStore.write_apart` (issue 16): a write that keeps out of the replicas' write
lock until it asks for it, on a real PostgreSQL. The lock is held from another session,
as another replica would hold it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import aiosqlite
import psycopg
import pytest

from agent.features import FEATURES
from control.db.postgres import PostgresStore
from control.db.postgres_schema import WRITE_LOCK
from control.db.store import Exclusive, Store, fetch_one
from control.users import features
from control.users.room_feed_pg import LOG, Feed, trigger_sql
from control.users.room_index import WATCHED
from control.workers import servers
from control.workers.heartbeats import HeartbeatWriter
from shared.protocol import Heartbeat, Resources
from tests.agent.test_e2e import until
from tests.test_replica_nonces import caller


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[PostgresStore]:
    opened = PostgresStore(postgres_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def other(postgres_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """Another replica's session."""
    conn = await psycopg.AsyncConnection.connect(postgres_url, autocommit=True)
    try:
        yield conn
    finally:
        await conn.close()


async def held_elsewhere(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether some other session holds the write lock (a probe that takes it gives it back)."""
    row = await (await conn.execute("SELECT pg_try_advisory_lock(%s)", (WRITE_LOCK,))).fetchone()
    if row and row[0]:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (WRITE_LOCK,))
    return not (row and row[0])


async def a_server(store: PostgresStore, with_room_log: bool = False) -> str:
    server_id = servers.new_server_id()

    async def insert(conn: aiosqlite.Connection) -> None:
        if with_room_log:
            await Feed().install(conn, trigger_sql(WATCHED))
        await servers.insert_joined(conn, server_id, 1.0)

    await store.write(insert)
    return server_id


def setting(column: str, value: object, server_id: str) -> Any:
    async def fn(conn: aiosqlite.Connection, exclusive: Exclusive) -> None:
        await conn.execute(f"UPDATE servers SET {column} = ? WHERE id = ?", (value, server_id))

    return fn


async def test_it_writes_while_another_replica_holds_the_lock_and_waits_once_it_asks(
    store: PostgresStore, other: psycopg.AsyncConnection[Any]
) -> None:
    server_id = await a_server(store)
    await other.execute("SELECT pg_advisory_lock(%s)", (WRITE_LOCK,))
    await asyncio.wait_for(store.write_apart(setting("last_heartbeat", 5.0, server_id)), 10)
    row = await store.fetch_one("SELECT last_heartbeat FROM servers WHERE id = ?", (server_id,))
    assert row is not None and row[0] == 5.0

    async def asks(conn: aiosqlite.Connection, exclusive: Exclusive) -> tuple[bool, bool]:
        return await exclusive(), await exclusive()

    plain_write = asyncio.create_task(store.write(lambda conn: fetch_one(conn, "SELECT 1")))
    asking = asyncio.create_task(store.write_apart(asks))
    await asyncio.sleep(0.5)
    assert not plain_write.done() and not asking.done()  # both wait for the lock
    await other.execute("SELECT pg_advisory_unlock(%s)", (WRITE_LOCK,))
    assert await asyncio.wait_for(asking, 10) == (True, False)  # let in once, then held
    await asyncio.wait_for(plain_write, 10)


async def test_a_long_wait_for_a_row_runs_it_again_behind_the_lock(
    store: PostgresStore, other: psycopg.AsyncConnection[Any], postgres_url: str
) -> None:
    """Another write holding the row may be waiting for a row this one holds: past
    APART_WAIT this write gives way, and runs again holding the lock from the start."""
    server_id = await a_server(store)
    runs: list[bool] = []

    async def first_run_only(conn: aiosqlite.Connection, exclusive: Exclusive) -> None:
        runs.append(False)
        if len(runs) > 1:
            assert await exclusive() is False  # the run again holds it already
        async with conn.execute(
            "UPDATE servers SET last_heartbeat = ? WHERE id = ?", (7.0, server_id)
        ):
            pass

    await other.execute("BEGIN")
    await other.execute("SELECT id FROM servers WHERE id = %s FOR UPDATE", (server_id,))
    writing = asyncio.create_task(store.write_apart(first_run_only))

    async def ran_again() -> bool:
        return len(runs) == 2

    await until(ran_again, "the write run again", 10)
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as probe:
        assert await held_elsewhere(probe)  # the run again holds the lock while it waits
    assert not writing.done()
    await other.execute("COMMIT")
    await asyncio.wait_for(writing, 10)
    row = await store.fetch_one("SELECT last_heartbeat FROM servers WHERE id = ?", (server_id,))
    assert row is not None and row[0] == 7.0


async def test_a_watched_change_made_apart_is_logged_under_the_lock_all_the_same(
    store: PostgresStore, other: psycopg.AsyncConnection[Any]
) -> None:
    """The room index's triggers take the lock before they log (control/users/
    room_feed_pg.py): a change `write_apart` was not meant to make still logs in order."""
    server_id = await a_server(store, with_room_log=True)
    await other.execute("SELECT pg_advisory_lock(%s)", (WRITE_LOCK,))
    cordoning = asyncio.create_task(store.write_apart(setting("cordoned", 1, server_id)))
    await asyncio.sleep(0.5)
    assert not cordoning.done()  # its trigger waits for the lock
    await other.execute("SELECT pg_advisory_unlock(%s)", (WRITE_LOCK,))
    await asyncio.wait_for(cordoning, 10)
    logged = await store.fetch_one(f"SELECT COUNT(*) FROM {LOG} WHERE server_id = ?", (server_id,))
    assert logged is not None and logged[0] == 2  # its insert, and the cordon


async def test_a_plain_heartbeat_is_recorded_while_another_replica_holds_the_lock(
    store: PostgresStore, other: psycopg.AsyncConnection[Any]
) -> None:
    """control/workers/heartbeats.py: the fleet's usual heartbeat takes no lock; one that
    changes what placement reads (here a worker back from unhealthy) waits for it."""
    declared = sorted(FEATURES)

    async def add(conn: aiosqlite.Connection) -> None:
        for server_id, status in (("w1", "active"), ("w2", "unhealthy")):
            await conn.execute(
                "INSERT INTO servers (id, name, status, origin, created_at, status_changed_at, "
                "cpus, memory_mb, disk_gb, features) VALUES (?, ?, ?, 'manual', 0, 0, 4, 8192, "
                "80, ?)",
                (server_id, server_id, status, features.stored(declared)),
            )

    await store.write(add)
    writer = HeartbeatWriter(cast(Store, store))
    hb = Heartbeat("1.0.0", 0, Resources(cpus=4, memory_mb=8192, disk_gb=80), [], features=declared)
    await other.execute("SELECT pg_advisory_lock(%s)", (WRITE_LOCK,))
    try:
        await asyncio.wait_for(writer.submit(caller("w1"), hb, 30.0), 10)
        back = asyncio.create_task(writer.submit(caller("w2"), hb, 30.0))
        await asyncio.sleep(0.5)
        assert not back.done()
    finally:
        await other.execute("SELECT pg_advisory_unlock(%s)", (WRITE_LOCK,))
    await asyncio.wait_for(back, 10)
    rows = await store.fetch_all("SELECT id, status, last_heartbeat FROM servers ORDER BY id")
    assert [(r["id"], r["status"], r["last_heartbeat"] is not None) for r in rows] == [
        ("w1", "active", True),
        ("w2", "active", True),
    ]
    await writer.close()
