"""Failover under load (issue 16): two real control planes (`python -m control`) on one
real PostgreSQL database, each on its own port with LEADER_LEASE_TTL=6 s, the fake
Hetzner API behind a recording proxy per replica (tests/failover_cluster.py).

Load: protocol-level workers heartbeating and holding long-polls against both replicas
(each request to the next replica in turn, as a round-robin load balancer sends them;
a replica that stops answering is left out), and users created through both replicas
at a steady rate.

`kill -9` of the leader (found through /readyz's `leader` check). Then:
- the other replica leads within LEADER_LEASE_TTL + a third of it (docs/production.md,
  "What a failover costs") plus SLACK for a loaded machine, measured from the kill to the
  new term's `acquired_at` in the lease row, and no later than SLACK after the dead
  leader's lease lapsed;
- every acknowledged write is in the database: each 201 `POST /v1/users`, and for each
  worker its last 200 heartbeat (whose agent version carries its sequence number);
- no container restarts: the spec hash of every user in a worker's whole set as the
  leader renders it just before the kill is the same in every set the survivor gives
  that worker afterwards, up to its whole set at the end; and every placed user is
  delivered to the one worker the database places it on;
- the autoscaler never runs twice at once: provider calls other than start-up's
  validation come only from the replica leading at the time (the follower's proxy sees
  none before it leads, the dead one's none after the kill), the new leader does run,
  and the lease changed hands once (two `leader_elected` events).
A leader paused (SIGSTOP) in the middle of a provider call is deposed the same way;
resumed with that call's reply waiting in its socket, it follows the new leader: it
renews nothing (the lease row keeps the new term), its run goes on to no further
provider call, and it says it stopped leading. (That its singleton writes would fail
is test_leader_postgres.py's, at the store.)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from psycopg.rows import dict_row

from tests.failover_cluster import ADMIN, Replica, Tap, Worker, join, replica_env
from tests.fakes.hetzner import HetznerFake, agent_dist
from tests.postgres_server import PostgresServer

TTL = 6.0  # LEADER_LEASE_TTL: long enough that a follower one TTL late exceeds SLACK
SLACK = 3.0  # a loaded 2-core machine (CI, xdist): the new leader's loop may be late to look
BOUND = TTL + TTL / 3 + SLACK
AUTOSCALE_INTERVAL = 1.0
WAIT = 45.0  # generous deadline of each bounded wait
WORKERS = 4  # 60 users of the default plan in all: room for every user the test makes
BEFORE = 10  # users placed and delivered before the kill


@dataclass
class Cluster:
    replicas: list[Replica]
    session: aiohttp.ClientSession
    database_url: str
    workers: list[Worker] = field(default_factory=list)
    acked: dict[str, float] = field(default_factory=dict)  # user -> when its 201 came

    def query(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        conn = psycopg.connect(self.database_url, autocommit=True, row_factory=dict_row)
        with contextlib.closing(conn):
            return list(conn.execute(sql, params).fetchall())

    def lease(self) -> dict[str, Any]:
        (row,) = self.query("SELECT * FROM leases WHERE name = 'singletons'")
        return row

    async def leader(self) -> tuple[Replica, Replica]:
        """(leader, follower) once one replica leads and the other knows it."""

        async def found() -> tuple[Replica, Replica] | None:
            a, b = self.replicas
            da, db = await a.ready(self.session), await b.ready(self.session)
            if da and db and da.startswith("this replica leads") and " leads, epoch" in db:
                return a, b
            if da and db and db.startswith("this replica leads") and " leads, epoch" in da:
                return b, a
            return None

        pair: tuple[Replica, Replica] = await until(found, "one leads and the other follows")
        return pair

    async def create_users(self, stop: asyncio.Event, every: float) -> None:
        """POST /v1/users at a steady rate, alternating replicas; records each 201."""
        headers = {"Authorization": f"Bearer {ADMIN}"}
        n = 0
        while not stop.is_set():
            n += 1
            user, replica = f"u{n}", self.replicas[n % 2]
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.session.post(
                    replica.url + "/v1/users", json={"user_id": user, "subdomain": user},
                    headers=headers, timeout=aiohttp.ClientTimeout(total=10),
                ) as r:  # fmt: skip
                    if r.status == 201:
                        self.acked[user] = time.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    def placed(self) -> dict[str, str]:
        """Acknowledged users the database has placed: user -> server."""
        rows = self.query("SELECT id, server_id FROM users WHERE server_id IS NOT NULL")
        return {r["id"]: r["server_id"] for r in rows if r["id"] in self.acked}

    def delivered(self) -> dict[str, str]:
        """Users in the last desired set each worker received: user -> server."""
        return {user: w.server_id for w in self.workers for user in w.desired()}


async def until(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Polls `check` (plain or async) until it answers something true."""
    deadline = time.monotonic() + timeout
    while not (found := await answer(check)):
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.05)
    return found


async def answer(check: Callable[[], Any]) -> Any:
    found = check()
    return await found if inspect.isawaitable(found) else found


@pytest.fixture
async def cluster(
    postgres_server: PostgresServer, hetzner_fake: HetznerFake, tmp_path: Path
) -> AsyncIterator[Cluster]:
    database_url = postgres_server.new_database()
    agent_dist(tmp_path / "dist")
    replicas: list[Replica] = []
    async with aiohttp.ClientSession() as session:
        try:
            for name in ("a", "b"):
                tap = Tap(name, hetzner_fake.url)
                await tap.start()
                home = tmp_path / name
                env = replica_env(
                    name, home, database_url, tap, hetzner_fake.token,
                    LEADER_LEASE_TTL=str(TTL), AUTOSCALE_INTERVAL=str(AUTOSCALE_INTERVAL),
                )  # fmt: skip
                replicas.append(Replica(name, env, home, tap))
            await asyncio.gather(*(r.start(session) for r in replicas))
            yield Cluster(replicas, session, database_url)
        finally:
            for replica in replicas:
                await replica.close()
            drop(postgres_server, database_url)


def drop(server: PostgresServer, database_url: str) -> None:
    name = database_url.rsplit("/", 1)[1]
    with contextlib.closing(psycopg.connect(server.url(), autocommit=True)) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def run_load(cluster: Cluster, stop: asyncio.Event) -> list[asyncio.Task[None]]:
    a, b = cluster.replicas
    for i in range(WORKERS):  # joined through each replica in turn
        first, second = (a, b) if i % 2 == 0 else (b, a)
        cluster.workers.append(await join(cluster.session, [first.url, second.url], i))
    tasks = [asyncio.create_task(w.run(stop, beat_every=1.0)) for w in cluster.workers]
    tasks.append(asyncio.create_task(cluster.create_users(stop, every=0.2)))
    return tasks


async def settled(cluster: Cluster, since: float, at_least: int) -> bool:
    """At least `at_least` users acknowledged after `since` are placed, and every placed
    user has been delivered to the worker it is placed on (the others wait for room)."""
    placed = cluster.placed()
    recent = [u for u in placed if cluster.acked[u] >= since]
    return len(recent) >= at_least and cluster.delivered().items() >= placed.items()


async def test_kill_9_the_leader_under_load(cluster: Cluster) -> None:
    leader, follower = await cluster.leader()
    stop = asyncio.Event()
    tasks = await run_load(cluster, stop)
    try:
        await until(lambda: settled(cluster, 0, BEFORE), "users placed before the kill")
        await until(leader.tap.singleton_calls, "the leader's autoscaler runs")
        before: dict[str, dict[str, str]] = {}
        for worker in cluster.workers:  # each one's whole set as the doomed leader renders it
            await worker.refresh(leader.url)
            before[worker.server_id] = dict(worker.desired())
        beats_before = {w.server_id: w.seq for w in cluster.workers}
        sets_before = {w.server_id: len(w.seen) for w in cluster.workers}
        assert any(before.values()), before
        killed_at = time.time()
        await leader.kill()
        lapses_at = cluster.lease()["expires_at"]  # its last renewal's: no more come
        await until(lambda: follower.leads(cluster.session), "the follower leads")
        led_at = time.time()
        await until(lambda: settled(cluster, led_at, 3), "users placed and delivered after")
        await until(
            lambda: [c for c in follower.tap.calls if c.started > led_at],
            "the new leader's autoscaler runs",
        )
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    for worker in cluster.workers:  # what each would run now: its whole set from the survivor
        await worker.refresh(follower.url)

    lease = cluster.lease()
    assert lease["epoch"] == 2, lease
    took = lease["acquired_at"] - killed_at
    assert took <= BOUND, f"the follower led {took:.2f} s after the kill (bound {BOUND} s)"
    late = lease["acquired_at"] - lapses_at
    assert late <= SLACK, f"taken {late:.2f} s after the dead leader's lease lapsed"
    elected = cluster.query("SELECT at, message FROM events WHERE kind = 'leader_elected'")
    assert len(elected) == 2, elected

    # Every acknowledged write is in the database.
    users = {r["id"] for r in cluster.query("SELECT id FROM users")}
    assert set(cluster.acked) <= users, sorted(set(cluster.acked) - users)
    rows = cluster.query("SELECT id, agent_version FROM servers")
    stored = {r["id"]: int(r["agent_version"].rsplit(".", 1)[1]) for r in rows}
    for worker in cluster.workers:
        assert worker.acked > beats_before[worker.server_id], worker.errors  # kept beating
        assert stored[worker.server_id] >= worker.acked, (worker.server_id, stored)

    # No container restarts: what each worker had before (the dead leader's rendering)
    # keeps its spec hash in every set after (the survivor's).
    for worker in cluster.workers:
        for at, _, specs in worker.seen[sets_before[worker.server_id] :]:
            for user, spec_hash in before[worker.server_id].items():
                assert specs.get(user) == spec_hash, (worker.server_id, user, at - killed_at)
    assert cluster.delivered() == cluster.placed()  # each where the database says, once

    # The autoscaler never ran on two replicas at once.
    dead_calls = leader.tap.singleton_calls()
    new_calls = follower.tap.singleton_calls()
    assert dead_calls and all(c.started <= killed_at for c in dead_calls)
    assert new_calls and all(c.started >= lease["acquired_at"] for c in new_calls), (
        lease, new_calls[:3],
    )  # fmt: skip


async def test_a_paused_leader_is_deposed_and_follows_when_it_resumes(cluster: Cluster) -> None:
    leader, follower = await cluster.leader()
    await until(leader.tap.singleton_calls, "the leader runs")
    gate = leader.tap.gate = asyncio.Event()  # paused in the middle of a provider call
    await until(lambda: leader.tap.held, "a call of the leader's run held in flight")
    paused_at = time.time()
    leader.signal(signal.SIGSTOP)
    await until(lambda: follower.leads(cluster.session), "the follower leads")
    lease = cluster.lease()
    assert lease["epoch"] == 2 and lease["acquired_at"] - paused_at <= BOUND, lease

    def runs_since(t: float) -> Callable[[], bool]:
        return lambda: len([c for c in follower.tap.calls if c.started > t]) >= 2

    await until(runs_since(lease["acquired_at"]), "the new leader's autoscaler runs")
    replied = len(leader.tap.calls)
    gate.set()  # the held reply waits in the paused replica's socket
    await until(lambda: len(leader.tap.calls) > replied, "the held call answered")
    leader.signal(signal.SIGCONT)
    resumed_at = time.time()

    async def follows() -> bool:
        detail = await leader.ready(cluster.session) or ""
        return detail.startswith(f"{lease['holder']} leads, epoch 2")

    await until(follows, "the resumed replica follows the new leader")
    followed_at = time.time()
    await until(runs_since(followed_at), "the new leader keeps running")

    now = cluster.lease()  # the resumed replica renewed nothing and took nothing
    assert (now["holder"], now["epoch"], now["acquired_at"]) == (
        lease["holder"], lease["epoch"], lease["acquired_at"],
    )  # fmt: skip
    elected = cluster.query("SELECT message FROM events WHERE kind = 'leader_elected'")
    assert len(elected) == 2, elected
    late = [c for c in leader.tap.singleton_calls() if c.started >= lease["acquired_at"]]
    assert late == [], (late, resumed_at)
    assert "stops leading (epoch 1)" in leader.log_text()
