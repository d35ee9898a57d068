"""What `/metrics` reads from the database at scrape time (control/api/metrics_endpoint.py
sets the gauges from it through control/metrics.py `refresh`).

Contract: aggregates only, never a row per server or user: counts by status and state,
the oldest pending wait, event counts, the containers reporting an error, and the live
workers' heartbeat ages as a histogram. At 10k servers the rows per server made 10k
series and parsed 10k reports in Python on every scrape (issue 16). The counts and the
errors come from the counts the database keeps by itself (control/db/counts.py: a few
rows, however big the fleet), the oldest wait through `users_state`, the histogram from
the `servers_heartbeat` index (one entry per server, not its row with its report).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from control.db import counts
from control.db.store import Store

# Upper bounds (seconds) of /metrics' heartbeat-age histogram: around the default
# 5 s interval, the 3-interval lateness mark, and the ages of a worker going dead.
HEARTBEAT_AGE_BUCKETS = (1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0)
_LIVE = "status IN ('active', 'unhealthy')"


async def metrics_snapshot(store: Store) -> dict[str, Any]:
    """The scrape's aggregates, as `control.metrics.refresh` takes them. Asked at once:
    they queue on the store's thread back to back, not each behind the event loop's turn."""
    oldest, servers, users, ages, kinds, errors = await asyncio.gather(
        store.fetch_one(
            "SELECT MIN(updated_at) AS t FROM users WHERE state = 'pending' AND error IS NULL"
        ),
        counts.servers_by_status(store),
        counts.users_by_state(store),
        heartbeat_ages(store, time.time()),
        counts.events_by_kind(store),
        counts.container_errors(store),
    )
    return {
        "servers": servers,
        "users": users,
        "heartbeat_ages": ages,
        "oldest_pending": oldest["t"] if oldest else None,
        "events": kinds,
        "container_errors": errors,
        "webhooks": {},
    }


async def heartbeat_ages(store: Store, now: float) -> dict[str, Any]:
    """The live servers' heartbeat ages as a histogram: cumulative counts per upper
    bound of HEARTBEAT_AGE_BUCKETS, the count, the sum and the oldest (0 without any)."""
    age = "MAX(0.0, ? - last_heartbeat)"
    within = ", ".join(f"COALESCE(SUM({age} <= ?), 0)" for _ in HEARTBEAT_AGE_BUCKETS)
    row = await store.fetch_one(
        f"SELECT COUNT(*), COALESCE(SUM({age}), 0.0), COALESCE(MAX({age}), 0.0), {within} "
        f"FROM servers WHERE {_LIVE} AND last_heartbeat IS NOT NULL",
        [now, now, *(v for b in HEARTBEAT_AGE_BUCKETS for v in (now, b))],
    )
    values = tuple(row) if row else (0, 0.0, 0.0, *(0 for _ in HEARTBEAT_AGE_BUCKETS))
    count, total, oldest, *within_counts = values
    return {
        "buckets": list(zip(HEARTBEAT_AGE_BUCKETS, within_counts, strict=True)),
        "count": count,
        "sum": total,
        "oldest": oldest,
    }
