"""The room index (control/users/room_index.py) against its oracle, `rooms()`.

Random operations run through the real code paths (the Fleet's workers, users, moves,
billing and flags; the writer modules of servers, volumes and relocations, as the
liveness sweep, the autoscaler and the volume steps call them) on a real SQLite
store, and after every one the index equals a fresh read of the whole fleet. A write
that rolls back leaves the index as it was; users placed in one transaction see each
other's use; and the index rebuilt at start-up equals the one kept live.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import aiosqlite
import pytest

from agent.features import FEATURES
from control.db.postgres import PostgresStore
from control.db.store import Store, fetch_all
from control.errors import ClawfleetError
from control.fleet import Fleet
from control.keyring import Keyring
from control.plans import DEFAULT_PLAN
from control.users import placing
from control.users import records as users
from control.users.placement import Demand, Orders, Room, choose_server, place
from control.users.rooms import HOLDERS_SQL, SOURCE_HELD, rooms
from control.volumes import records as volumes
from control.volumes import relocations
from control.workers import servers
from control.workers.auth import AgentCaller
from shared import signing
from shared.protocol import ContainerReport, Heartbeat, RegisterRequest, Resources
from tests.fixtures import INTERNAL_SECRET, make_settings

SMALL = dataclasses.replace(DEFAULT_PLAN, memory_mb=512, cpus=0.3)
BIG = dataclasses.replace(DEFAULT_PLAN, name="big", memory_mb=1536, cpus=0.7)
PHASES = [p.strip("' ") for p in SOURCE_HELD.strip("()").split(",")] + ["done", "aborted"]
Op = Callable[["World"], Awaitable[bool]]


def caller(key_id: str) -> AgentCaller:
    return AgentCaller(key_id, signing.new_nonce(), int(time.time()), b"")


class World:
    """A Fleet on a real store, and what the random operations pick from."""

    def __init__(self, fleet: Fleet, rng: random.Random) -> None:
        self.fleet, self.rng = fleet, rng
        self.workers: dict[str, Resources] = {}
        self.users = 0

    async def write(self, fn: Callable[[aiosqlite.Connection], Awaitable[object]]) -> None:
        await self.fleet.store.write(fn)

    async def pick(self, sql: str) -> str | None:
        rows = await self.fleet.store.fetch_all(sql + " ORDER BY 1")  # the seed decides alone
        return str(self.rng.choice(rows)[0]) if rows else None

    async def oracle(self) -> dict[str, Room]:
        fleet = self.fleet

        async def read(conn: aiosqlite.Connection) -> list[Room]:
            return await rooms(conn, fleet.plans, fleet.reserve)

        return {room.server_id: room for room in await fleet.store.write(read)}

    def index(self) -> dict[str, Room]:
        return {room.server_id: room for room in self.fleet.room_index.rooms()}

    async def used(self) -> tuple[int, float]:
        """What every holder takes, less the holders on dead and deleted servers."""
        held = await self.fleet.store.fetch_all(
            f"SELECT h.plan FROM ({HOLDERS_SQL}) h JOIN servers s ON s.id = h.holder "
            "WHERE s.status NOT IN ('dead', 'deleted')"
        )
        plans = [self.fleet.plans[r["plan"]] for r in held]
        return sum(p.memory_mb for p in plans), round(sum(p.cpus for p in plans), 6)


async def join(w: World, memory_mb: int | None = None) -> bool:
    memory = memory_mb or w.rng.choice([4096, 8192])
    resources = Resources(cpus=w.rng.choice([2, 4]), memory_mb=memory, disk_gb=40)
    minted = await w.fleet.mint_join_token(None)
    request = RegisterRequest(1, "1.0.0", f"w{len(w.workers)}", resources, list(FEATURES))
    reply = await w.fleet.register(caller(minted.token_id), request)
    w.workers[reply.worker_id] = resources
    return True


async def create(w: World) -> bool:
    w.users += 1
    user = f"u{w.users}"
    await w.fleet.create_user(user, user, w.rng.choice(["default", "big"]))
    return True


async def move(w: World) -> bool:
    """An operator's move, to the best fit or (a third of the time) to a named server."""
    user = await w.pick("SELECT id FROM users WHERE server_id IS NOT NULL AND state = 'running'")
    if user is None:
        return False
    target = await w.pick("SELECT id FROM servers") if w.rng.random() < 0.3 else None
    await w.fleet.move_user(user, target)
    return True


async def heartbeat(w: World) -> bool:
    """A worker reports its users healthy: provisioning users run, moves complete."""
    if not w.workers:
        return False
    worker = w.rng.choice(sorted(w.workers))
    rows = await w.fleet.store.fetch_all("SELECT id FROM users WHERE server_id = ?", (worker,))
    running = [ContainerReport(r["id"], "running", "healthy") for r in rows]
    beat = Heartbeat("1.0.0", 1, w.workers[worker], running, features=list(FEATURES))
    await w.fleet.heartbeat(caller(worker), beat)
    return True


async def user_target(w: World) -> bool:
    user = await w.pick("SELECT id FROM users WHERE state != 'deprovisioned'")
    if user is None:
        return False
    goal = w.rng.choice(["deprovision", "suspend", "run", "run"])
    await w.fleet.set_user_target(user, goal, "test")  # type: ignore[arg-type]
    return True


async def plan(w: World) -> bool:
    user = await w.pick("SELECT id FROM users")
    if user is None:
        return False
    name = w.rng.choice(["default", "big"])
    await w.write(lambda conn: users.set_billing_status(conn, user, None, None, name, 1.0))
    return True


async def flag(w: World) -> bool:
    server = await w.pick("SELECT id FROM servers WHERE status = 'active'")
    if server is None:
        return False
    await w.fleet.set_server_flag(server, w.rng.choice(["cordon", "uncordon", "drain"]))
    return True


async def retire(w: World) -> bool:
    """A worker dies (its users are released, as the sweep does) or is deleted."""
    server = await w.pick("SELECT id FROM servers WHERE status NOT IN ('dead', 'deleted')")
    if server is None:
        return False
    status = w.rng.choice(["dead", "deleted", "unhealthy"])

    async def apply(conn: aiosqlite.Connection) -> None:
        await servers.set_status(conn, server, status, time.time())
        if status == "dead":
            await users.release_from(conn, [server], time.time())
        if status == "deleted":
            await users.forget_suspended_on(conn, server)

    await w.write(apply)
    return True


async def volume(w: World) -> bool:
    """A user's volume is created, attached somewhere, detached or deleted."""
    user = await w.pick("SELECT id FROM users")
    server = await w.pick("SELECT id FROM servers")
    if user is None or server is None:
        return False
    step, now = w.rng.choice(["create", "attach", "attaching", "detach", "forget"]), time.time()

    async def apply(conn: aiosqlite.Connection) -> None:
        if step == "create":
            await volumes.begin_create(conn, user, f"v-{user}", "local", "here", 10, now)
            await volumes.created(conn, user, f"p-{user}", "/dev/x", now)
        elif step == "forget":
            await volumes.forget(conn, user)
        else:
            state = {"attach": "attached", "attaching": "attaching", "detach": "detached"}[step]
            await volumes.set_state(conn, user, state, None if step == "detach" else server, now)

    await w.write(apply)
    return True


async def relocation(w: World) -> bool:
    """A move to another location begins, goes through its phases, or is forgotten."""
    rows = await w.fleet.store.fetch_all(
        "SELECT v.*, u.server_id AS source FROM volumes v JOIN users u ON u.id = v.user_id "
        "ORDER BY v.user_id"
    )
    target = await w.pick("SELECT id FROM servers")
    if not rows or target is None:
        return False
    row = w.rng.choice(rows)
    user, now = row["user_id"], time.time()

    async def apply(conn: aiosqlite.Connection) -> None:
        moving = await relocations.get(conn, user)
        if moving is None:
            source = row["source"] or target
            await relocations.begin(conn, row, source, target, "there", f"n-{user}", now)
        elif w.rng.random() < 0.2:
            await relocations.forget(conn, user)
        else:
            await relocations.advance(conn, user, w.rng.choice(PHASES), now)

    await w.write(apply)
    return True


OPS: list[tuple[Op, int]] = [
    (join, 3),
    (create, 5),
    (move, 5),
    (heartbeat, 4),
    (user_target, 3),
    (plan, 2),
    (flag, 2),
    (retire, 1),
    (volume, 3),
    (relocation, 2),
]


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Each backend's store: on PostgreSQL the index is fed by its own triggers
    (control/users/room_feed_pg.py), which the same random operations check."""
    if request.param == "postgres":
        store = cast(Store, PostgresStore(request.getfixturevalue("postgres_url")))
    else:
        store = Store(str(tmp_path / "clawfleet.db"))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def started(store: Store, tmp_path: Path, user_volumes: bool) -> Fleet:
    settings = make_settings(
        tmp_path, plans={"default": SMALL, "big": BIG}, user_volumes=user_volumes
    )
    fleet = Fleet(settings, store, Keyring(INTERNAL_SECRET))
    await fleet.start()
    return fleet


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("user_volumes", [False, True])
async def test_the_index_equals_a_rebuild_after_every_operation(
    store: Store, tmp_path: Path, seed: int, user_volumes: bool
) -> None:
    world = World(await started(store, tmp_path, user_volumes), random.Random(seed))
    done: dict[str, int] = {}
    ops, weights = zip(*OPS, strict=True)
    used = slots = False
    # Server ids are random, so the seed alone does not fix which operations find
    # something to act on: run at least 200 steps, and on until every kind has run and
    # the fleet has held users and volumes (without the latter, a run whose volumes
    # never stayed attached at a check failed the last assertion by chance).
    for step in range(1000):
        covered = used and slots and all(done.get(op.__name__) for op in ops)
        if step >= 200 and covered:
            break
        op = join if step < 2 else world.rng.choices(ops, weights)[0]
        try:
            happened = await op(world)
        except ClawfleetError:  # refused (no room, not movable): the refusal rolled back
            happened = False
        done[op.__name__] = done.get(op.__name__, 0) + happened
        assert world.index() == await world.oracle(), f"after {op.__name__} (step {step})"
        memory, cpus = world.fleet.room_index.used()
        assert (memory, round(cpus, 6)) == await world.used(), f"after {op.__name__}"
        used = used or any(r.memory_used_mb for r in world.index().values())
        slots = slots or any(r.volume_slots < 16 for r in world.index().values())
    await world.fleet.heartbeats.close()
    # Every kind of operation really ran, and the fleet really held users and volumes.
    assert [op.__name__ for op, _ in OPS if not done.get(op.__name__)] == [], done
    assert used and slots


async def test_a_rolled_back_write_leaves_the_index_unchanged(store: Store, tmp_path: Path) -> None:
    world = World(await started(store, tmp_path, False), random.Random(0))
    for op in (join, join, create, create):
        await op(world)
    await world.write(_pending)
    before = world.index()
    fleet = world.fleet

    async def placed_then_failed(conn: aiosqlite.Connection) -> None:
        result = await placing.place_pending(
            conn, fleet.plans, fleet.reserve, fleet.needs, fleet.room_index
        )
        assert result.placed  # the write did change rooms before it failed
        await servers.set_flag(conn, sorted(world.workers)[0], "drain")
        raise RuntimeError("failed after placing")

    with pytest.raises(RuntimeError):
        await store.write(placed_then_failed)
    assert world.index() == before
    await store.probe()  # the next commit re-reads what the rolled-back write touched
    assert world.index() == before == await world.oracle()
    await fleet.heartbeats.close()


async def test_what_a_write_tries_is_not_seen_outside_it(store: Store, tmp_path: Path) -> None:
    """A write runs on the store's own thread while the loop serves other requests: the
    rooms a placement tries before its commit (`Orders.trial`) are never what `rooms()`
    answers them (the autoscaler's snapshot)."""
    if store.postgres:
        pytest.skip("PostgreSQL's writes run on the event loop: nothing reads meanwhile")
    world = World(await started(store, tmp_path, False), random.Random(0))
    await join(world, 4096)
    (server,) = world.workers
    before = world.index()
    index = world.fleet.room_index
    trying, release = threading.Event(), threading.Event()

    async def tries(conn: aiosqlite.Connection) -> None:
        await conn.execute("SELECT 1")
        with index._orders.trial():
            index._orders.put(server, None)  # tried: the server has no room
            trying.set()
            release.wait(10)  # holds the write's thread, not the loop

    write = asyncio.create_task(store.write(tries))
    try:
        assert await asyncio.to_thread(trying.wait, 10)
        assert world.index() == before  # the committed room, not the tried one
    finally:
        release.set()
        await write
    assert world.index() == before == await world.oracle()
    await world.fleet.heartbeats.close()


async def _pending(conn: aiosqlite.Connection) -> None:
    """Two users left pending (as if no worker had room when they came)."""
    for user in ("p1", "p2"):
        await users.insert(conn, user, user, SMALL.name, "token", now=1.0)


async def test_users_placed_in_one_transaction_see_each_others_use(
    store: Store, tmp_path: Path
) -> None:
    fleet = await started(store, tmp_path, False)
    world = World(fleet, random.Random(0))
    await join(world, 1536)  # less the 512 MB reserve: room for two small users, not three
    (server,) = world.workers
    free = world.index()[server].memory_free_mb
    assert free // SMALL.memory_mb == 2
    index = fleet.room_index

    async def place_three(conn: aiosqlite.Connection) -> list[str | None]:
        chosen: list[str | None] = []
        for user in ("a", "b", "c"):
            await users.insert(conn, user, user, SMALL.name, "token", now=time.time())
            placed, _ = await index.place(conn, [Demand(user, SMALL.memory_mb, SMALL.cpus)])
            chosen.append(placed.get(user))
            if user in placed:
                await users.set_state(conn, user, "provisioning", placed[user], time.time())
        assert await index.room(conn, server) == (await rooms(conn, fleet.plans, fleet.reserve))[0]
        return chosen

    assert await store.write(place_three) == [server, server, None]
    assert world.index() == await world.oracle()
    assert world.index()[server].memory_free_mb == free - 2 * SMALL.memory_mb
    await fleet.heartbeats.close()


async def test_the_start_up_rebuild_equals_the_live_index(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "clawfleet.db"))
    await store.open()
    world = World(await started(store, tmp_path, True), random.Random(7))
    for step in range(300):  # at least 60 steps, and on until some server holds a user
        if step >= 60 and any(r.memory_used_mb for r in world.index().values()):
            break
        op = join if step < 2 else world.rng.choices(*zip(*OPS, strict=True))[0]
        try:
            await op(world)
        except ClawfleetError:
            pass
    live = world.index()
    await world.fleet.heartbeats.close()
    await store.close()
    store = Store(str(tmp_path / "clawfleet.db"))
    await store.open()
    try:
        again = await started(store, tmp_path, True)
        assert {r.server_id: r for r in again.room_index.rooms()} == live
        assert any(r.memory_used_mb for r in live.values())
        await again.heartbeats.close()
    finally:
        await store.close()


async def test_the_store_commit_hook_runs_only_after_commit(store: Store) -> None:
    """Its first half sees the write; its second runs only once COMMIT succeeded."""
    if isinstance(store, PostgresStore):  # tests/test_postgres_store.py has its hooks'
        pytest.skip("SQLite's deferred foreign keys fail the COMMIT itself")
    seen: list[str] = []

    async def hook(conn: aiosqlite.Connection) -> Callable[[], None]:
        rows = await fetch_all(conn, "SELECT COUNT(*) FROM users")
        seen.append(f"prepared {rows[0][0]}")
        return lambda: seen.append("committed")

    store.add_commit_hook(hook)

    async def user(conn: aiosqlite.Connection) -> None:
        await users.insert(conn, "a", "a", "default", "token", now=1.0)

    async def fails_at_commit(conn: aiosqlite.Connection) -> None:
        # A deferred foreign key is checked by COMMIT itself, after the hook ran.
        await conn.execute("PRAGMA defer_foreign_keys = ON")
        await users.insert(conn, "b", "b", "default", "token", now=1.0)
        await users.set_state(conn, "b", "provisioning", "no-such-server", 1.0)

    await store.write(user)
    with pytest.raises(sqlite3.IntegrityError):
        await store.write(fails_at_commit)
    assert seen == ["prepared 1", "committed", "prepared 2"]
    assert [r["id"] for r in await store.fetch_all("SELECT id FROM users")] == ["a"]


def random_rooms(rng: random.Random, n: int) -> list[Room]:
    features = [None, frozenset(), frozenset({"a"}), frozenset({"a", "b"})]
    return [
        Room(
            f"s{i:02d}",
            rng.random() > 0.2,
            rng.choice([2048, 4096]),
            rng.choice([0, 512, 1024]),
            rng.choice([1.0, 2.0]),
            rng.choice([0.0, 0.25, 0.5]),
            rng.choice([None, "x", "y"]),
            rng.choice([0, 1, 2]),
            rng.choice(features),
        )
        for i in range(n)
    ]


def random_demands(rng: random.Random, n: int) -> list[Demand]:
    needs = [frozenset(), frozenset({"a"}), frozenset({"b"})]
    return [
        Demand(
            f"u{i}",
            rng.choice([256, 512, 1024]),
            rng.choice([0.25, 0.5]),
            rng.choice([None, None, "x", "y"]),
            rng.random() < 0.5,
            rng.choice(needs),
        )
        for i in range(n)
    ]


def one_by_one(demands: list[Demand], rooms: list[Room]) -> tuple[dict[str, str], list[str]]:
    """The reference: `choose_server` over every room for each user in turn."""
    by_id = {room.server_id: room for room in rooms}
    placed: dict[str, str] = {}
    unplaced: list[str] = []
    for d in demands:
        chosen = choose_server(by_id.values(), d.memory_mb, d.cpus, d)
        if chosen is None:
            unplaced.append(d.user_id)
            continue
        r = by_id[chosen]
        slots = r.volume_slots - (1 if d.volume else 0)
        by_id[chosen] = dataclasses.replace(
            r,
            memory_used_mb=r.memory_used_mb + d.memory_mb,
            cpus_used=r.cpus_used + d.cpus,
            volume_slots=slots,
        )
        placed[d.user_id] = chosen
    return placed, unplaced


@pytest.mark.parametrize("seed", range(20))
def test_sorted_orders_place_as_a_scan_of_every_room_would(seed: int) -> None:
    rng = random.Random(seed)
    rooms, demands = random_rooms(rng, 30), random_demands(rng, 60)
    assert place(demands, rooms) == one_by_one(demands, rooms)


@pytest.mark.parametrize("seed", range(20))
def test_orders_changed_room_by_room_equal_orders_built_at_once(seed: int) -> None:
    """`put` keeps the sorted lists as a fresh build would; `trial` undoes puts and takes."""
    rng = random.Random(seed)
    before, after = random_rooms(rng, 30), random_rooms(rng, 30)
    gone = {r.server_id for r in after if rng.random() < 0.2}
    demands = random_demands(rng, 40)
    orders = Orders(before)
    with orders.trial():
        for room in after:
            orders.put(room.server_id, None if room.server_id in gone else room)
        orders.take(demands[0])
    assert [orders.best(d) for d in demands] == [Orders(before).best(d) for d in demands]
    for room in after:
        orders.put(room.server_id, None if room.server_id in gone else room)
    final = [r for r in after if r.server_id not in gone]
    assert orders.rooms == {r.server_id: r for r in final}
    assert [orders.best(d) for d in demands] == [Orders(final).best(d) for d in demands]


async def test_what_another_connection_writes_is_seen(store: Store, tmp_path: Path) -> None:
    """An operator's sqlite3 shell: no trigger of ours fires, SQLite's data_version tells.
    (PostgreSQL's twin: tests/test_pg_room_index.py.)"""
    if isinstance(store, PostgresStore):
        pytest.skip("an operator's sqlite3 shell: SQLite only")
    fleet = await started(store, tmp_path, False)
    world = World(fleet, random.Random(0))
    for _ in range(2):
        await join(world, 4096)
    first, second = sorted(world.workers)

    def elsewhere(sql: str, server: str) -> None:
        with sqlite3.connect(store.path, timeout=10) as db:
            db.execute(sql, (server,))

    await asyncio.to_thread(elsewhere, "UPDATE servers SET cordoned = 1 WHERE id = ?", first)
    # Placement, before any write of ours, decides on what the database holds now.
    await world.write(lambda conn: users.insert(conn, "p", "p", SMALL.name, "t", now=1.0))
    result = await fleet.place()
    assert result.placed == {"p": second}
    assert world.index() == await world.oracle()
    # A reader: `synced` applies it without a write of the reader's own.
    await asyncio.to_thread(elsewhere, "UPDATE servers SET status = 'dead' WHERE id = ?", second)
    await fleet.room_index.synced()
    assert second not in world.index() and world.index() == await world.oracle()
    memory, cpus = fleet.room_index.used()
    assert (memory, round(cpus, 6)) == await world.used() == (0, 0.0)
    # Nothing written elsewhere since: a reader takes no write lock at all.
    writes = 0
    write = store.write

    async def counted(fn: Any) -> Any:
        nonlocal writes
        writes += 1
        return await write(fn)

    store.write = counted  # type: ignore[method-assign]
    await fleet.room_index.synced()
    assert writes == 0
    await asyncio.to_thread(elsewhere, "UPDATE servers SET status = 'dead' WHERE id = ?", first)
    await fleet.room_index.synced()
    assert writes == 1 and world.index() == {}
    await fleet.heartbeats.close()
