"""Nonces unique across replicas (issue 16, control/workers/nonces.py): the database
judges a replay when a pair is written, so a request accepted by one control plane is
refused by another sharing the database (two PostgreSQL stores stand for two
replicas); and a replay in a heartbeat batch fails only its own request. The batch
rules hold on SQLite too (there the pair was stored before, as a restart leaves it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

import aiosqlite
import pytest

from agent.features import FEATURES
from control.db.postgres import PostgresStore
from control.db.store import Store
from control.errors import Unauthorized
from control.workers import nonces
from control.workers.auth import AgentCaller
from control.workers.heartbeats import HeartbeatWriter
from shared import signing
from shared.protocol import Heartbeat, Resources

AnyStore = Store | PostgresStore
WORKERS = ("w1", "w2", "w3")
RESOURCES = Resources(cpus=4, memory_mb=8192, disk_gb=80)


def caller(key_id: str) -> AgentCaller:
    return AgentCaller(key_id, signing.new_nonce(), int(time.time()), b"")


async def _add_servers(conn: aiosqlite.Connection) -> None:
    for server_id in WORKERS:
        await conn.execute(
            "INSERT INTO servers (id, name, status, origin, created_at, status_changed_at, "
            "cpus, memory_mb, disk_gb) VALUES (?, ?, 'active', 'manual', 0, 0, 4, 8192, 80)",
            (server_id, server_id),
        )


@pytest.fixture(params=["sqlite", "postgres"])
async def replicas(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[AnyStore, AnyStore]]:
    """(replica A, replica B) on one database; on SQLite both are the one store."""
    opened: list[AnyStore] = []
    try:
        if request.param == "sqlite":
            opened.append(Store(str(tmp_path / "clawfleet.db")))
        else:
            url = request.getfixturevalue("postgres_url")
            opened += [PostgresStore(url), PostgresStore(url)]
        for store in opened:
            await store.open()
        await opened[0].write(_add_servers)
        yield opened[0], opened[-1]
    finally:
        for store in opened:
            await store.close()


def is_replay(exc: BaseException) -> bool:
    return (
        isinstance(exc, Unauthorized)
        and (exc.status, exc.code) == (401, "replayed_request")
        and "replayed" in exc.message
    )


async def test_a_request_accepted_by_one_replica_is_refused_by_another(
    replicas: tuple[AnyStore, AnyStore],
) -> None:
    a, b = replicas
    poll = caller("w1")
    # The domain code is typed with SQLite's Store; PostgresStore keeps its contract.
    first, second = HeartbeatWriter(cast(Store, a)), HeartbeatWriter(cast(Store, b))
    assert await first.accept(poll) == 0
    with pytest.raises(Unauthorized) as refused:
        await second.accept(poll)
    assert is_replay(refused.value)
    # A single request's own transaction (registration, origin TLS) is refused whole.
    with pytest.raises(Unauthorized) as again:
        await b.write(poll.accept_live_worker)
    assert is_replay(again.value)
    await first.close()
    await second.close()


async def test_a_replay_in_a_heartbeat_batch_fails_alone_and_the_batch_commits(
    replicas: tuple[AnyStore, AnyStore],
) -> None:
    a, b = replicas
    callers = [caller(w) for w in WORKERS]
    replayed = callers[1]
    await a.write(lambda conn: nonces.persist(conn, replayed.key_id, replayed.nonce, 0))
    writes: list[int] = []

    async def count(conn: aiosqlite.Connection) -> Callable[[], None]:
        return lambda: writes.append(1)

    b.add_commit_hook(count)
    writer = HeartbeatWriter(cast(Store, b))
    beat = Heartbeat("1.0.0", 0, RESOURCES, [], features=list(FEATURES))
    # Submitted together: one batch, one transaction.
    outcomes = await asyncio.gather(
        *(writer.submit(c, beat, 10.0) for c in callers), return_exceptions=True
    )
    await writer.close()
    assert len(writes) == 1  # not split: the replay did not fail the transaction
    assert [o[0] for o in outcomes if not isinstance(o, BaseException)] == [0, 0]  # w1, w3
    assert isinstance(outcomes[1], BaseException) and is_replay(outcomes[1])
    rows = await b.fetch_all("SELECT id, last_heartbeat FROM servers ORDER BY id")
    assert [r["id"] for r in rows if r["last_heartbeat"] is not None] == ["w1", "w3"]


@pytest.mark.parametrize(
    ("pairs", "fresh"),
    [
        ([("w1", "aa"), ("w1", "bb")], [True, True]),
        ([("w1", "aa"), ("w2", "aa")], [True, True]),  # another key's nonce
        ([("w1", "aa"), ("w1", "aa")], [True, False]),  # twice in one batch
        ([("w1", "stored"), ("w1", "cc")], [False, True]),
        ([(f"w{i % 7}", f"{i:04x}") for i in range(700)], [True] * 700),  # several INSERTs
    ],
)
async def test_persist_many_says_which_pairs_are_new(
    replicas: tuple[AnyStore, AnyStore], pairs: list[tuple[str, str]], fresh: list[bool]
) -> None:
    a, b = replicas
    await a.write(lambda conn: nonces.persist(conn, "w1", "stored", 0))
    got = await b.write(lambda conn: nonces.persist_many(conn, [(k, n, 0) for k, n in pairs]))
    assert got == fresh
    count = await b.fetch_one("SELECT COUNT(*) AS n FROM nonces")
    assert count is not None and count["n"] == 1 + len(set(pairs) - {("w1", "stored")})
