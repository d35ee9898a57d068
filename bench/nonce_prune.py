"""How long one prune of the replay ledger holds the event loop, at the size 10k workers
give it (control/workers/nonces.py; issue 16, docs/benchmarks.md).

Run: `.venv/bin/python bench/nonce_prune.py [--pairs 100000] [--rate 200]`. It fills a
ledger with `--pairs` pairs claimed at `--rate` per second (the fleet's heartbeat
budget), then prunes once a second past the first expiry, as the liveness sweep does,
and prints the median and worst prune in ms as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from control.workers.nonces import NonceLedger, expiry

T0 = 1_800_000_000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--prunes", type=int, default=50)
    args = parser.parse_args()
    ledger = NonceLedger()
    for i in range(args.pairs):
        ledger.claim(f"srv-{i % 10_000}", f"{i:032x}", T0 + i // args.rate)
    took = []
    for k in range(args.prunes):
        began = time.perf_counter()
        ledger.prune(expiry(T0) + k)
        took.append((time.perf_counter() - began) * 1000)
    print(
        json.dumps(
            {
                "pairs": args.pairs,
                "left": len(ledger),
                "prune_median_ms": round(statistics.median(took), 3),
                "prune_max_ms": round(max(took), 3),
            }
        )
    )


if __name__ == "__main__":
    main()
