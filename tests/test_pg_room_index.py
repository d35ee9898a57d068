"""The room index on PostgreSQL (control/users/room_feed_pg.py): another replica's
writes reach it through the log, server by server, never by a read of the fleet, and
test_room_index.py's random operations through two replicas leave both indexes equal
to the fleet's read. A session that is no replica (an operator's psql, a write
connection opened again) logs nothing: its writes move the feed's sequence, and the
index rebuilds whole."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest

from control.db.postgres import PostgresStore
from control.db.store import Store
from control.errors import ClawfleetError
from control.fleet import Fleet
from control.users import records as users
from tests.test_pg_app import replica
from tests.test_room_index import OPS, SMALL, World, join, started


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


def counting_fleet_reads(fleet: Fleet) -> list[int]:
    """How many times `fleet`'s index reads every server from now on."""
    index = fleet.room_index
    whole, read = [0], index._read

    async def counted(conn: Any, server_ids: Any) -> Any:
        whole[0] += server_ids is None
        return await read(conn, server_ids)

    index._read = counted  # type: ignore[method-assign]
    return whole


async def test_another_replicas_writes_reach_the_index_server_by_server(
    postgres_url: str, tmp_path: Path
) -> None:
    """Replicas write all the time: the index follows the other replica's writes through
    the log, with no read of the whole fleet; a reader's `synced` too."""
    a, b = await replica(postgres_url, tmp_path), await replica(postgres_url, tmp_path)
    try:
        whole = counting_fleet_reads(a)
        await join(World(b, random.Random(0)), 4096)  # through B only
        assert a.room_index.rooms() == []
        await a.store.probe()  # any write of A's own brings B's in
        assert a.room_index.rooms() == b.room_index.rooms() != []
        await b.create_user("u1", "u1", "default")
        await a.room_index.synced()  # a reader, with no write of its own pending
        assert a.room_index.rooms() == b.room_index.rooms()
        assert a.room_index.rooms()[0].memory_used_mb == SMALL.memory_mb
        assert whole == [0]
    finally:
        for fleet in (a, b):
            await fleet.heartbeats.close()
            await fleet.store.close()


@pytest.mark.parametrize("seed", [1, 2])
async def test_two_replicas_indexes_equal_a_rebuild_after_every_operation(
    postgres_url: str, tmp_path: Path, seed: int
) -> None:
    """test_room_index.py's random operations, each through either replica; after each,
    both indexes (brought up to date by a write of their own) equal the fleet's read."""
    a, b = await replica(postgres_url, tmp_path), await replica(postgres_url, tmp_path)
    try:
        world = World(a, random.Random(seed))
        ops, weights = zip(*OPS, strict=True)
        for step in range(150):
            world.fleet = world.rng.choice([a, b])
            op = join if step < 2 else world.rng.choices(ops, weights)[0]
            with contextlib.suppress(ClawfleetError):  # refused: rolled back
                await op(world)
            for fleet in (a, b):
                world.fleet = fleet
                oracle = await world.oracle()  # a write: its commit brings the index up
                assert world.index() == oracle, f"replica {fleet is b:d} after {op.__name__}"
    finally:
        for fleet in (a, b):
            await fleet.heartbeats.close()
            await fleet.store.close()
