"""Leadership on a real SQLite store with an injected clock (control/leadership/): a
deposed leader's singleton writes fail and roll back while ordinary writes go on, and a
renewal the store refuses stops the singletons at once; they come back with the lease."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import pytest

from control.db import events
from control.db.store import Store, StoreUnavailable
from control.leadership import lease
from control.leadership.fencing import TERM, NotLeader
from control.leadership.leadership import LEASE, Leadership

TTL = 600.0  # the background loop never looks again by itself during a test
WAIT = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(str(tmp_path / "db.sqlite"))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def log(store: Store, message: str) -> None:
    await store.write(lambda conn: events.record(conn, "test", message))


async def logged(store: Store) -> list[str]:
    rows = await store.fetch_all("SELECT message FROM events WHERE kind = 'test' ORDER BY id")
    return [str(row["message"]) for row in rows]


async def take_over(store: Store, clock: Clock) -> None:
    """Another replica's Leadership taking the lapsed lease (its own write, no term)."""
    take = functools.partial(lease.take, name=LEASE, me="other", now=clock(), ttl=TTL)
    assert (await store.write(take)).action == "acquire"


def as_singleton(leadership: Leadership, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """`work` in the context `Leadership.guard` gives a singleton: its writes carry the term."""
    context = contextvars.copy_context()
    context.run(TERM.set, leadership.term)
    return asyncio.create_task(work, context=context)


@pytest.mark.parametrize("taken", [True, False], ids=["another-holder-took-it", "lapsed"])
async def test_a_deposed_leaders_singleton_write_fails_and_rolls_back(
    store: Store, taken: bool
) -> None:
    clock = Clock()
    leadership = Leadership(TTL, clock=clock, holder="me")
    await leadership.start(store)
    try:
        assert leadership.term is not None and leadership.term.epoch == 1
        await as_singleton(leadership, log(store, "first"))
        clock.now += TTL + 1  # the leader stopped renewing: its lease lapsed
        if taken:
            await take_over(store, clock)
        leadership.decided.clear()
        with pytest.raises(NotLeader) as refused:
            await as_singleton(leadership, log(store, "second"))
        assert refused.value.code == "not_leader" and refused.value.status == 503
        await log(store, "ordinary")  # not a singleton's: no fence, no cost
        assert await logged(store) == ["first", "ordinary"]  # "second" rolled back
        # The refusal woke the leadership, which decided again at once: it follows the
        # new holder, or (nobody took the lapsed lease) leads again in a new term.
        await asyncio.wait_for(leadership.decided.wait(), WAIT)
        if taken:
            assert leadership.term is None and leadership.status()["leader"] == "other"
        else:
            assert leadership.term is not None and leadership.term.epoch == 2
    finally:
        await leadership.stop()


async def test_without_the_fence_the_same_write_would_land(store: Store) -> None:
    """The control for the test above: the fence is what refuses, not the write."""
    clock = Clock()
    leadership = Leadership(TTL, clock=clock, holder="me")
    await leadership.start(store)
    try:
        clock.now += TTL + 1
        await take_over(store, clock)
        await log(store, "outside any term")
        assert await logged(store) == ["outside any term"]
    finally:
        await leadership.stop()


async def test_a_failed_renewal_stops_the_singletons_and_the_lease_brings_them_back(
    store: Store,
) -> None:
    clock = Clock()
    leadership = Leadership(TTL, clock=clock, holder="me")
    running, stopped = asyncio.Event(), asyncio.Event()
    ran: list[str] = []

    async def sweeps() -> None:
        running.set()
        try:
            await asyncio.Event().wait()
        finally:
            running.clear()
            stopped.set()

    async def job() -> None:
        ran.append("job")

    leadership.add_loop("sweeps", sweeps)
    await leadership.start(store)
    try:
        await asyncio.wait_for(running.wait(), WAIT)
        await store.write(lambda c: c.execute("PRAGMA query_only = 1"))  # writes now fail
        with pytest.raises(StoreUnavailable):
            await log(store, "refused")
        await leadership.step()  # the renewal
        assert stopped.is_set() and not running.is_set()  # awaited, not only cancelled
        assert leadership.term is None
        await leadership.guard(job)()
        assert ran == [] and leadership.refused == 1
        await _writable(store)
        await leadership.step()  # still this replica's live lease: renewed, same epoch
        assert leadership.term is not None and leadership.term.epoch == 1
        await asyncio.wait_for(running.wait(), WAIT)
        await leadership.guard(job)()
        assert ran == ["job"]
    finally:
        await leadership.stop()
    assert stopped.is_set()
    assert (await lease.read(store, LEASE)) is not None


async def _writable(store: Store) -> None:
    """Ends the outage: PRAGMA query_only is the write connection's own, and a write
    transaction cannot run while it is on, so it is turned off on that connection."""
    await store._writes.call(lambda conn: conn.execute("PRAGMA query_only = 0"))


async def test_stop_releases_the_lease_for_the_next_replica(store: Store) -> None:
    clock = Clock()
    first = Leadership(TTL, clock=clock, holder="first")
    await first.start(store)
    await first.stop()
    second = Leadership(TTL, clock=clock, holder="second")
    await second.start(store)
    try:
        assert second.term is not None and second.term.epoch == 2  # at once, not at expiry
    finally:
        await second.stop()


async def test_a_resumed_leader_whose_lease_lapsed_runs_no_singleton(store: Store) -> None:
    """A process paused past its lease (SIGSTOP, a VM freeze) still has its term until its
    loop looks again; a job the scheduler fires in that moment must not start."""
    clock = Clock()
    leadership = Leadership(TTL, clock=clock, holder="me")
    await leadership.start(store)
    ran: list[str] = []

    async def job() -> None:
        ran.append("ran")

    guarded = leadership.guard(job)
    try:
        await guarded()
        assert ran == ["ran"] and leadership.refused == 0
        clock.now += TTL + 1  # paused past the lease; the loop has not looked yet
        assert leadership.term is not None
        await guarded()
        assert ran == ["ran"] and leadership.refused == 1
    finally:
        await leadership.stop()
