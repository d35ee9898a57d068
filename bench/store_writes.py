"""What one write transaction costs on SQLite (control/db/store.py), alone and queued.

Run: `.venv/bin/python bench/store_writes.py` (`--writes N`, default 3000; `--statements
K`, default 9). It opens a store on a temp database and runs N writes of K statements
each (K - 1 inserts, then a read), after 200 to warm up:
1. one at a time: each write's time (median and p99) and the process's CPU per write
   (the event loop and the store's threads together);
2. N at once, queued on the write lock: wall time per write.

It prints one JSON line. To measure another tree (an older commit), run this file with
that tree first on the path: `cd <tree> && PYTHONPATH=. python <this file>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiosqlite

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # after PYTHONPATH: the tree measured may be another

from control.db.store import Store, fetch_all  # noqa: E402

INSERT = "INSERT INTO events (at, kind, message) VALUES (?, 'bench', 'x')"


async def measure(writes: int, statements: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(str(Path(tmp) / "bench.db"))
        await store.open()

        async def write(conn: aiosqlite.Connection) -> int:
            for i in range(statements - 1):
                await conn.execute(INSERT, (i,))
            rows = await fetch_all(conn, "SELECT COUNT(*) FROM events WHERE at = 0")
            return int(rows[0][0])

        try:
            for _ in range(200):
                await store.write(write)
            times = []
            cpu = time.process_time()
            for _ in range(writes):
                start = time.perf_counter()
                await store.write(write)
                times.append(time.perf_counter() - start)
            cpu = time.process_time() - cpu
            start = time.perf_counter()
            await asyncio.gather(*(store.write(write) for _ in range(writes)))
            queued = time.perf_counter() - start
        finally:
            await store.close()
    times.sort()
    return {
        "writes": writes,
        "statements": statements,
        "alone_p50_ms": round(statistics.median(times) * 1e3, 3),
        "alone_p99_ms": round(times[int(len(times) * 0.99)] * 1e3, 3),
        "cpu_per_write_ms": round(cpu / writes * 1e3, 3),
        "queued_per_write_ms": round(queued / writes * 1e3, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--writes", type=int, default=3000)
    parser.add_argument("--statements", type=int, default=9)
    args = parser.parse_args()
    if not 1 <= args.writes <= 100_000 or not 1 <= args.statements <= 1000:
        parser.error("--writes must be 1-100000 and --statements 1-1000")
    print(json.dumps(asyncio.run(measure(args.writes, args.statements))))


if __name__ == "__main__":
    main()
