"""The long-poll board's waiters and the long-poll's admission (issue 16).

The board resolves each waiter's one future from `notify`, from its single deadline
timer or from `close`; a long-poll's nonce is committed by the heartbeats' group
commit, so concurrent long-polls share transactions instead of one write each.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import aiosqlite
import pytest

from agent.features import FEATURES
from control.db.store import Store
from control.errors import Forbidden, ServiceUnavailable
from control.fleet import Fleet
from control.keyring import Keyring
from control.workers import servers
from control.workers.assignments import GenerationBoard, held_for
from control.workers.auth import AgentCaller
from shared import signing
from shared.protocol import RegisterRequest, Resources
from tests.fixtures import INTERNAL_SECRET, make_settings

T = TypeVar("T")
FAR = 3600.0  # a deadline no test reaches


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
        fleet.board.close()
        await fleet.heartbeats.close()
        await store.close()


async def registered(fleet: Fleet, count: int) -> list[str]:
    ids = []
    resources = Resources(cpus=4, memory_mb=8192, disk_gb=80)
    for i in range(count):
        minted = await fleet.mint_join_token(None)
        request = RegisterRequest(1, "1.0.0", f"w{i}", resources, features=list(FEATURES))
        ids.append((await fleet.register(caller(minted.token_id), request)).worker_id)
    return ids


def counted(store: Store) -> list[int]:
    """Counts the store's write transactions from now on (the real store still writes)."""
    writes = [0]
    write = store.write

    async def counting(fn: Callable[..., Awaitable[T]]) -> T:
        writes[0] += 1
        return await write(fn)

    store.write = counting  # type: ignore[method-assign]
    return writes


async def test_concurrent_long_polls_commit_their_nonces_together(fleet: Fleet) -> None:
    ids = await registered(fleet, 12)
    callers = [caller(worker_id) for worker_id in ids]
    writes = counted(fleet.store)
    replies = await asyncio.gather(*(fleet.assignments(c, 0, 0) for c in callers))
    assert all(reply is not None and reply.generation >= 1 for reply in replies)
    # The first admission runs alone, the eleven that queued behind it in one more.
    assert writes[0] <= 2
    with sqlite3.connect(fleet.store.path) as db:
        stored = {tuple(r) for r in db.execute("SELECT key_id, nonce FROM nonces")}
    assert {(c.key_id, c.nonce) for c in callers} <= stored


async def test_a_long_poll_of_a_missing_worker_is_refused_and_writes_nothing(fleet: Fleet) -> None:
    ghost = caller("srv-ghost0001")
    with pytest.raises(Forbidden) as refused:
        await fleet.assignments(ghost, 0, 0)
    assert refused.value.code == "worker_revoked"
    with sqlite3.connect(fleet.store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM nonces").fetchone() == (0,)


async def test_waiters_expire_in_deadline_order_not_entry_order() -> None:
    board = GenerationBoard()
    now = asyncio.get_running_loop().time()
    late = board.enter("srv-a", now + FAR)
    soon = board.enter("srv-b", now + 0.01)
    assert await soon is False  # its deadline passed: the board's one timer resolved it
    assert not late.done()
    board.notify("srv-a")
    assert await late is True
    board.leave("srv-a", late)
    board.leave("srv-b", soon)
    assert board.waiters() == 0


async def test_notify_wakes_only_the_named_workers_waiters() -> None:
    changed: list[int] = []
    board = GenerationBoard(on_change=lambda: changed.append(1))
    now = asyncio.get_running_loop().time()
    a1, a2, b = (board.enter(s, now + FAR) for s in ("srv-a", "srv-a", "srv-b"))
    board.notify("srv-a")
    assert (await a1, await a2, b.done()) == (True, True, False)
    assert changed == [1]
    board.notify()  # nothing changed: no DNS round either
    assert changed == [1]


async def test_waiters_that_left_do_not_pile_up() -> None:
    board = GenerationBoard()
    now = asyncio.get_running_loop().time()
    for _ in range(1000):
        board.leave("srv-a", board.enter("srv-a", now + FAR))
    assert board.waiters() == 0
    assert len(board._deadlines) <= 2 * board.waiters() + 65


async def test_close_wakes_every_waiter_and_refuses_new_ones() -> None:
    board = GenerationBoard()
    now = asyncio.get_running_loop().time()
    waiting = [board.enter(f"srv-{i}", now + FAR) for i in range(3)]
    board.close()
    assert [await w for w in waiting] == [False, False, False]
    assert await board.enter("srv-x", now + FAR) is False
    assert board.waiters() == 0


async def test_until_parked_returns_once_a_long_poll_waits(fleet: Fleet) -> None:
    (worker_id,) = await registered(fleet, 1)
    poll = asyncio.ensure_future(fleet.assignments(caller(worker_id), 10**6, 30))
    await asyncio.wait_for(fleet.board.until_parked(worker_id), 30)
    assert not poll.done() and fleet.board.waiters() == 1
    fleet.board.close()
    with pytest.raises(ServiceUnavailable, match="shutting down"):
        await poll
    assert fleet.board.waiters() == 0


@pytest.mark.parametrize(
    ("wait", "rand", "held"),
    [
        (16.0, 0.0, 15.0),  # the most it is shortened: a sixteenth
        (16.0, 0.5, 15.5),
        (16.0, 0.999999, 16.0),  # never longer than asked
        (55.0, 0.0, 55.0 * 15 / 16),
        (0.0, 0.7, 0.0),  # `wait=0` answers at once, whatever the draw
    ],
)
def test_a_long_poll_is_held_up_to_a_sixteenth_less_than_asked(
    wait: float, rand: float, held: float
) -> None:
    assert held_for(wait, rand) == pytest.approx(held, abs=1e-4)


@pytest.mark.parametrize(
    ("asked", "rand", "held"), [(16, 0.0, 15.0), (16, 0.5, 15.5), (600, 0.0, 56.25)]
)
async def test_the_fleet_holds_a_long_poll_for_the_spread_wait(
    fleet: Fleet, asked: int, rand: float, held: float
) -> None:
    """Polls that began together (a fleet reconnecting) end apart: the deadline the board
    gets is the draw's, and a wait over MAX_WAIT (60 s) is capped before it is spread."""
    (worker_id,) = await registered(fleet, 1)
    fleet.rand = lambda: rand
    deadlines: list[float] = []
    enter = fleet.board.enter

    def recording(server_id: str, deadline: float) -> asyncio.Future[bool]:
        deadlines.append(deadline - asyncio.get_running_loop().time())
        return enter(server_id, deadline)

    fleet.board.enter = recording  # type: ignore[method-assign]
    poll = asyncio.ensure_future(fleet.assignments(caller(worker_id), 10**6, asked))
    await asyncio.wait_for(fleet.board.until_parked(worker_id), 30)
    fleet.board.close()
    with pytest.raises(ServiceUnavailable):
        await poll
    assert deadlines and held - 1.0 < deadlines[0] <= held


async def test_a_woken_long_poll_answers_from_one_read_and_refuses_a_revoked_worker(
    fleet: Fleet,
) -> None:
    """A woken round reads the set (generation and status with it) in one go: a change
    is delivered, and a worker retired while it waits gets 403, not a set."""
    first, second = await registered(fleet, 2)
    reads = [0]
    store_read = fleet.store.read

    async def counting(fn: Callable[..., T]) -> T:
        reads[0] += 1
        return await store_read(fn)

    fleet.store.read = counting  # type: ignore[method-assign]
    generations = {}
    for worker in (first, second):
        reply = await fleet.assignments(caller(worker), 0, 0)
        assert reply is not None
        generations[worker] = reply.generation
    polls = {
        w: asyncio.create_task(fleet.assignments(caller(w), g, FAR)) for w, g in generations.items()
    }
    for worker in polls:
        await fleet.board.until_parked(worker)
    reads[0] = 0

    async def retire(conn: aiosqlite.Connection) -> None:
        await conn.execute("UPDATE servers SET status = 'dead' WHERE id = ?", (second,))
        for worker in (first, second):
            await servers.bump_generation(conn, worker)

    await fleet.store.write(retire)
    fleet.board.notify(first, second)
    delivered = await polls[first]
    assert delivered is not None and delivered.generation == generations[first] + 1
    with pytest.raises(Forbidden) as refused:
        await polls[second]
    assert refused.value.code == "worker_revoked"
    assert reads[0] == 2  # one read per woken poll: no separate generation query
