"""Long-poll wake-ups and the leader's nudges across replicas (issue 16,
control/workers/wake_bus.py): two PostgreSQL stores on one database stand for two
control planes, each with its own board and wake bus. No write below calls `notify`:
every wake comes through the database's NOTIFY, as one from another replica would."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import aiosqlite
import psycopg
import pytest

from control.db.postgres import PostgresStore
from control.db.store import Store, StoreUnavailable
from control.leadership import nudges as nudge_jobs
from control.workers import assignments, servers
from control.workers.assignments import GenerationBoard
from control.workers.wake_bus import WakeBus
from tests.ports import free_port

WAIT = 60.0  # generous bound for CI under load; every wait ends on an event
FAR = 3600.0
WORKERS = ("w1", "w2")


@dataclass
class Replica:
    store: PostgresStore
    board: GenerationBoard
    bus: WakeBus
    nudges: asyncio.Queue[str | None]  # what the bus heard on the nudges' channel

    def waiter(self, server_id: str) -> asyncio.Future[bool]:
        return self.board.enter(server_id, asyncio.get_running_loop().time() + FAR)


async def _add_servers(conn: aiosqlite.Connection) -> None:
    for server_id in WORKERS:
        await conn.execute(
            "INSERT INTO servers (id, name, status, origin, created_at, status_changed_at) "
            "VALUES (?, ?, 'active', 'manual', 0, 0)",
            (server_id, server_id),
        )


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[tuple[Replica, Replica]]:
    opened: list[Replica] = []
    try:
        for _ in range(2):
            store = PostgresStore(postgres_url)
            await store.open()
            board = GenerationBoard()
            nudges: asyncio.Queue[str | None] = asyncio.Queue()
            bus = WakeBus(postgres_url, board, (nudge_jobs.CHANNEL, nudges.put_nowait))
            opened.append(Replica(store, board, bus, nudges))
        # At once, as replicas starting together: the trigger is installed under a lock.
        await asyncio.gather(*(r.bus.start() for r in opened))
        await opened[0].store.write(_add_servers)
        yield opened[0], opened[1]
    finally:
        for replica in opened:
            await replica.bus.close()
            replica.board.close()
            await replica.store.close()


def bump(server_id: str) -> Callable[[aiosqlite.Connection], Awaitable[None]]:
    return lambda conn: servers.bump_generation(conn, server_id)


async def test_a_commit_on_one_replica_wakes_waiters_on_every_replica(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    there, here, other = b.waiter("w1"), a.waiter("w1"), b.waiter("w2")
    await assignments.commit(cast(Store, a.store), lambda conn: asyncio.sleep(0), lambda _: ["w1"])
    assert await asyncio.wait_for(there, WAIT) is True
    assert await asyncio.wait_for(here, WAIT) is True  # the writer's own come back too
    assert not other.done()
    for replica, server_id, woken in ((b, "w1", there), (a, "w1", here), (b, "w2", other)):
        replica.board.leave(server_id, woken)


async def test_a_rolled_back_write_wakes_nobody(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    rolled_back, later = b.waiter("w1"), b.waiter("w2")

    async def bump_then_fail(conn: aiosqlite.Connection) -> None:
        await servers.bump_generation(conn, "w1")
        raise RuntimeError("refused after the bump")

    with pytest.raises(RuntimeError, match="refused"):
        await a.store.write(bump_then_fail)
    await a.store.write(bump("w2"))
    # PostgreSQL delivers in commit order: had the rolled-back bump notified, w1's
    # wake would have come before w2's.
    assert await asyncio.wait_for(later, WAIT) is True
    assert not rolled_back.done()
    b.board.leave("w1", rolled_back)
    b.board.leave("w2", later)


def _terminate(url: str, pid: int) -> bool:
    with contextlib.closing(psycopg.connect(url, autocommit=True)) as db:
        row = db.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
        return bool(row and row[0])


async def test_a_lost_listen_connection_reconnects_and_wakes_every_waiter(
    replicas: tuple[Replica, Replica], postgres_url: str
) -> None:
    a, b = replicas
    waiting = b.waiter("w1")
    pid = b.bus.backend_pid()
    assert pid is not None
    assert await asyncio.to_thread(_terminate, postgres_url, pid)
    await asyncio.wait_for(b.bus.until_connected(2), WAIT)
    # A change may have been missed while it was away: the waiter re-reads its set.
    assert await asyncio.wait_for(waiting, WAIT) is True
    assert b.bus.backend_pid() not in (None, pid)
    # A nudge for the leader may have been missed too: the bus says so, once.
    assert b.nudges.get_nowait() is None and b.nudges.empty()
    b.board.leave("w1", waiting)
    again = b.waiter("w1")
    await a.store.write(bump("w1"))  # and it listens again
    assert await asyncio.wait_for(again, WAIT) is True
    b.board.leave("w1", again)


async def test_a_nudge_reaches_every_replica_s_bus_as_sent(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    await a.store.notify(nudge_jobs.CHANNEL, "autoscale-now drop-tables")
    for replica in (a, b):  # the sender's own bus hears it too; only a leader acts
        heard = await asyncio.wait_for(replica.nudges.get(), WAIT)
        assert heard == "autoscale-now drop-tables" and replica.nudges.empty()
    woken = b.waiter("w1")
    await a.store.write(bump("w1"))  # a nudge wakes no long-poll, and the bus goes on
    assert await asyncio.wait_for(woken, WAIT) is True
    b.board.leave("w1", woken)
    assert b.nudges.empty()


async def _sessions(url: str, pid: int) -> int:
    async with await psycopg.AsyncConnection.connect(url) as db:
        found = await (
            await db.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
        ).fetchone()
    return int(found[0]) if found else 0


async def test_close_ends_the_listen_session(
    replicas: tuple[Replica, Replica], postgres_url: str
) -> None:
    _, b = replicas
    pid = b.bus.backend_pid()
    assert pid is not None and await _sessions(postgres_url, pid) == 1
    await b.bus.close()
    await b.bus.close()  # twice is safe
    assert b.bus.backend_pid() is None
    # The server process ends just after the client hangs up: a bounded poll.
    for _ in range(int(WAIT / 0.05)):
        if not await _sessions(postgres_url, pid):
            break
        await asyncio.sleep(0.05)
    assert await _sessions(postgres_url, pid) == 0


async def test_a_payload_may_name_several_servers(
    replicas: tuple[Replica, Replica], postgres_url: str
) -> None:
    _, b = replicas
    first, second = b.waiter("w1"), b.waiter("w2")
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as db:
        await db.execute("SELECT pg_notify('clawfleet_wake', 'w1 w2')")
    assert list(await asyncio.wait_for(asyncio.gather(first, second), WAIT)) == [True, True]
    b.board.leave("w1", first)
    b.board.leave("w2", second)


async def test_wake_all_wakes_every_waiter_and_says_the_sets_changed() -> None:
    changes: list[None] = []
    board = GenerationBoard(on_change=lambda: changes.append(None))
    deadline = asyncio.get_running_loop().time() + FAR
    waiters = [board.enter(w, deadline) for w in ("w1", "w1", "w2")]
    board.wake_all()
    assert [w.result() for w in waiters] == [True, True, True]
    assert len(changes) == 1
    for server_id, woken in zip(("w1", "w1", "w2"), waiters, strict=True):
        board.leave(server_id, woken)
    assert board.waiters() == 0
    board.close()


async def test_a_bus_that_cannot_reach_the_database_does_not_start() -> None:
    board = GenerationBoard()
    bus = WakeBus(f"postgresql://clawfleet:s3cret@127.0.0.1:{free_port()}/fleet", board)
    with pytest.raises(StoreUnavailable) as refused:
        await bus.start()
    assert "s3cret" not in refused.value.message
    assert bus.backend_pid() is None
    await bus.close()  # nothing to stop, and safe
    board.close()
