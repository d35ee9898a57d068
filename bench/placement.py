"""Placement speed: 100,000 users over 1,000 servers with the real `place` function.

Prints one JSON line: users, servers, placed, seconds (best of --repeat runs).
Target: under 1 s on a 2-core machine (docs/benchmarks.md).

With --store: one new user's placement as the control plane runs it (issue 16), a
write transaction of `placing.place_pending` on a real SQLite store seeded with
--servers active servers and --users placed users, once over the room index
(control/users/room_index.py) and once reading the whole fleet as before it. Prints
the seeding and index rebuild times and, per way, the median and worst of --repeat
placements in milliseconds.

With --autoscaler: one autoscaler decision (`decisions.servers_needed`) over --servers
CPX31-sized rooms (7.5 GB, 3.75 CPUs free of the reserve), each holding 5-7 users of the
default plan, with --users users waiting (they fit on the fleet). Prints the median and
worst of --repeat decisions in milliseconds, and the decision.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from typing import Any

import aiosqlite

from control.capacity import decisions
from control.db.store import Store
from control.plans import DEFAULT_PLAN
from control.users import placing
from control.users.placement import Demand, Room, place
from control.users.room_index import RoomIndex
from control.users.rooms import Reserve

PLANS = {"default": DEFAULT_PLAN}
RESERVE = Reserve(512, 0.0, False)


def scenario(users: int, servers: int, seed: int) -> tuple[list[Demand], list[Room]]:
    rng = random.Random(seed)
    plans = [(1024, 0.5), (2048, 1.0), (4096, 2.0)]
    demands = [Demand(f"u{i}", *rng.choice(plans)) for i in range(users)]
    rooms = [
        Room(
            f"s{i:05d}",
            rng.random() > 0.05,
            256 * 1024,
            rng.randrange(0, 64 * 1024, 1024),
            128.0,
            0.0,
        )
        for i in range(servers)
    ]
    return demands, rooms


async def seed(conn: aiosqlite.Connection, servers: int, users: int) -> None:
    """Active servers of 256 GB and 128 CPUs, and users spread over them, in bulk."""
    await conn.executemany(
        "INSERT INTO servers (id, name, status, origin, memory_mb, cpus, features, location, "
        "created_at, status_changed_at) VALUES (?, ?, 'active', 'joined', ?, 128, '', 'fsn1', 1, 1)",
        [(f"s{i:05d}", f"s{i:05d}", 256 * 1024) for i in range(servers)],
    )
    await conn.executemany(
        "INSERT INTO users (id, subdomain, plan, state, server_id, created_at, updated_at) "
        "VALUES (?, ?, 'default', 'running', ?, 1, 1)",
        [(f"u{i}", f"u{i}", f"s{i % servers:05d}") for i in range(users)],
    )


async def one_placement(store: Store, index: RoomIndex | None, user: str) -> float:
    """Seconds of the write that places one new pending user."""

    async def pending(conn: aiosqlite.Connection) -> None:
        await conn.execute(
            "INSERT INTO users (id, subdomain, plan, state, created_at, updated_at) "
            "VALUES (?, ?, 'default', 'pending', 2, 2)",
            (user, user),
        )

    async def placed(conn: aiosqlite.Connection) -> placing.PlacementResult:
        return await placing.place_pending(conn, PLANS, RESERVE, frozenset(), index)

    await store.write(pending)
    start = time.perf_counter()
    result = await store.write(placed)
    seconds = time.perf_counter() - start
    assert result.placed, "no room for a new user"
    return seconds


async def store_bench(servers: int, users: int, repeat: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"{tmp}/placement.db")
        await store.open()
        try:
            start = time.perf_counter()
            await store.write(lambda conn: seed(conn, servers, users))
            seeded = time.perf_counter() - start
            index = RoomIndex(PLANS, RESERVE)
            start = time.perf_counter()
            await index.attach(store)
            rebuilt = time.perf_counter() - start
            ways: dict[str, Any] = {}
            for way, used in (("index", index), ("scan", None)):
                times = [await one_placement(store, used, f"{way}{n}") for n in range(repeat)]
                ways[way] = _ms(times)
                index_rooms = len(index.rooms())
        finally:
            await store.close()
    return {
        "servers": servers,
        "users": users,
        "seed_s": round(seeded, 2),
        "index_rebuild_ms": round(rebuilt * 1000, 1),
        "indexed_rooms": index_rooms,
        **ways,
    }


def _ms(times: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(times) * 1000, 2),
        "max_ms": round(max(times) * 1000, 2),
    }


def autoscaler_bench(servers: int, users: int, repeat: int) -> dict[str, Any]:
    rng = random.Random(1)
    size = Demand("unit", DEFAULT_PLAN.memory_mb, DEFAULT_PLAN.cpus)
    held = [rng.choice([5, 6, 7]) for _ in range(servers)]
    rooms = [
        Room(f"s{i:05d}", True, 7680, n * size.memory_mb, 3.75, n * size.cpus)
        for i, n in enumerate(held)
    ]
    pending = [Demand(f"u{i}", size.memory_mb, size.cpus) for i in range(users)]
    new = Room("new", True, 7680, 0, 3.75, 0.0)
    times, need = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        need = decisions.servers_needed(pending, rooms, [], new, size, 5)
        times.append(time.perf_counter() - start)
    assert need is not None
    return {"servers": servers, "pending": users, "new_servers": need.servers, **_ms(times)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--servers", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--store", action="store_true", help="one placement, index vs scan")
    parser.add_argument("--autoscaler", action="store_true", help="one servers_needed")
    args = parser.parse_args()
    if args.autoscaler:
        print(json.dumps(autoscaler_bench(args.servers, args.users, args.repeat)))
        return
    if args.store:
        print(json.dumps(asyncio.run(store_bench(args.servers, args.users, args.repeat))))
        return
    demands, rooms = scenario(args.users, args.servers, seed=1)
    best = float("inf")
    placed_count = 0
    for _ in range(args.repeat):
        start = time.perf_counter()
        placed, _ = place(demands, rooms)
        best = min(best, time.perf_counter() - start)
        placed_count = len(placed)
    print(
        json.dumps(
            {
                "users": args.users,
                "servers": args.servers,
                "placed": placed_count,
                "seconds": round(best, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
