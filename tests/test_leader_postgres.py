"""Two leaderships on one real PostgreSQL database (tests/postgres_server.py), as two
replicas: one leads at a time; when the leader stops renewing, the other takes over as
its lease lapses, with a new epoch, and the deposed one's singleton writes fail."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest

from control.db import events
from control.db.postgres import PostgresStore
from control.leadership.fencing import TERM, NotLeader
from control.leadership.leadership import Leadership

TTL = 600.0  # the background loops never look again by themselves: the test steps them


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def stores(postgres_url: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    first, second = PostgresStore(postgres_url), PostgresStore(postgres_url)
    await first.open()
    try:
        await second.open()
        try:
            yield first, second
        finally:
            await second.close()
    finally:
        await first.close()


def as_singleton(leadership: Leadership, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    context = contextvars.copy_context()
    context.run(TERM.set, leadership.term)
    return asyncio.create_task(work, context=context)


async def log(store: PostgresStore, message: str) -> None:
    await store.write(lambda conn: events.record(conn, "test", message))


async def test_one_leads_at_a_time_and_the_other_takes_over_a_lapsed_lease(
    stores: tuple[PostgresStore, PostgresStore],
) -> None:
    clock = Clock()
    a = Leadership(TTL, clock=clock, holder="a")
    b = Leadership(TTL, clock=clock, holder="b")
    ran: list[str] = []

    async def job(name: str) -> None:
        ran.append(name)

    await a.start(stores[0])
    await b.start(stores[1])
    try:
        assert a.term is not None and a.term.epoch == 1 and b.term is None
        await a.guard(job)("a")
        await b.guard(job)("b")
        assert ran == ["a"] and b.refused == 1
        clock.now += TTL / 2
        await a.step()  # a renews
        await b.step()  # b still waits
        assert a.term is not None and b.term is None
        await as_singleton(a, log(stores[0], "a in epoch 1"))

        clock.now += TTL + 1  # a stops renewing (kill -9): its lease lapses
        await b.step()
        assert b.term is not None and b.term.epoch == 2
        with pytest.raises(NotLeader):
            await as_singleton(a, log(stores[0], "a after it was deposed"))
        await as_singleton(b, log(stores[1], "b in epoch 2"))
        await a.step()
        assert a.term is None and a.status()["leader"] == "b"
        await a.guard(job)("a")
        await b.guard(job)("b")
        assert ran == ["a", "b"]
        rows = await stores[1].fetch_all(
            "SELECT message FROM events WHERE kind = 'test' ORDER BY id"
        )
        assert [row["message"] for row in rows] == ["a in epoch 1", "b in epoch 2"]
    finally:
        await a.stop()
        await b.stop()
