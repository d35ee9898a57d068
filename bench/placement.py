"""Placement speed: 100,000 users over 1,000 servers with the real `place` function.

Prints one JSON line: users, servers, placed, seconds (best of --repeat runs).
Target: under 1 s on a 2-core machine (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import random
import time

from control.users.placement import Demand, Room, place


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--servers", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
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
