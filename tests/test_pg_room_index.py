"""The room index on PostgreSQL (control/users/room_feed_pg.py) when a session that is no
replica writes: an operator's psql has no touched-servers table, so the index's
triggers move the store's data_version instead, and the index rebuilds. (Another
replica's writes: tests/test_pg_app.py; the random operations: tests/test_room_index.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import psycopg
import pytest

from control.db.postgres import PostgresStore
from control.db.store import Store
from control.users import records as users
from tests.test_room_index import SMALL, World, join, started


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[Store]:
    opened = cast(Store, PostgresStore(postgres_url))
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def psql(url: str, sql: str, server: str) -> None:
    with contextlib.closing(psycopg.connect(url, autocommit=True)) as db:
        db.execute(sql, (server,))


async def test_what_a_psql_session_writes_is_seen(store: Store, tmp_path: Path) -> None:
    fleet = await started(store, tmp_path, False)
    world = World(fleet, random.Random(0))
    for _ in range(2):
        await join(world, 4096)
    first, second = sorted(world.workers)
    url = cast(PostgresStore, store).url
    await asyncio.to_thread(psql, url, "UPDATE servers SET cordoned = 1 WHERE id = %s", first)
    # Placement, before any write of ours, decides on what the database holds now.
    await world.write(lambda conn: users.insert(conn, "p", "p", SMALL.name, "t", now=1.0))
    result = await fleet.place()
    assert result.placed == {"p": second}
    assert world.index() == await world.oracle()
    # A reader: `synced` applies it without a write of its own.
    await asyncio.to_thread(psql, url, "UPDATE servers SET status = 'dead' WHERE id = %s", second)
    await fleet.room_index.synced()
    assert second not in world.index() and world.index() == await world.oracle()
    await fleet.heartbeats.close()


async def test_a_write_connection_opened_again_rebuilds_the_index(
    store: Store, tmp_path: Path
) -> None:
    """A new session has no touched-servers table: its rows draw from the sequence, and
    the index rebuilds rather than miss them."""
    fleet = await started(store, tmp_path, False)
    world = World(fleet, random.Random(0))
    await join(world, 4096)
    (server,) = world.workers
    writer = cast(PostgresStore, store)._writer
    assert writer is not None
    await writer.close()  # as the server dropping it would
    await world.write(lambda conn: users.insert(conn, "p", "p", SMALL.name, "t", now=1.0))
    assert (await fleet.place()).placed == {"p": server}
    await fleet.create_user("q", "q", "default")
    assert world.index() == await world.oracle()
    assert world.index()[server].memory_used_mb == 2 * SMALL.memory_mb
    await fleet.heartbeats.close()
