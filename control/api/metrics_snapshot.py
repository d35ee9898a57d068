"""What `/metrics` reads from the database at scrape time (control/api/metrics_endpoint.py
sets the gauges from it through control/metrics.py `refresh`).

Contract: aggregates only, never a row per server or user: counts by status and state,
the oldest pending wait, event counts, the containers reporting an error, and the live
workers' heartbeat ages as a histogram. At 10k servers the rows per server made 10k
series and parsed 10k reports in Python on every scrape (issue 16).
"""

from __future__ import annotations

import time
from typing import Any

from control.db.store import Store

# Upper bounds (seconds) of /metrics' heartbeat-age histogram: around the default
# 5 s interval, the 3-interval lateness mark, and the ages of a worker going dead.
HEARTBEAT_AGE_BUCKETS = (1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0)
_LIVE = "status IN ('active', 'unhealthy')"


async def metrics_snapshot(store: Store) -> dict[str, Any]:
    """The scrape's aggregates, as `control.metrics.refresh` takes them."""
    servers = await store.fetch_all("SELECT status, COUNT(*) AS n FROM servers GROUP BY status")
    users = await store.fetch_all("SELECT state, COUNT(*) AS n FROM users GROUP BY state")
    oldest = await store.fetch_one(
        "SELECT MIN(updated_at) AS t FROM users WHERE state = 'pending' AND error IS NULL"
    )
    kinds = await store.fetch_all("SELECT kind, COUNT(*) AS n FROM events GROUP BY kind")
    # SQLite reads the reports without building Python objects: a text search first
    # (heartbeats store compact JSON, control/workers/heartbeats.py, so every report
    # with a string error holds `"error":"`), then JSON only where it matched.
    errors = await store.fetch_one(
        "SELECT COUNT(*) AS n FROM servers s, json_each(s.report, '$.containers') c "
        f'WHERE s.{_LIVE} AND instr(s.report, \'"error":"\') > 0 '
        "AND IFNULL(json_extract(c.value, '$.error'), '') != ''"
    )
    return {
        "servers": {r["status"]: r["n"] for r in servers},
        "users": {r["state"]: r["n"] for r in users},
        "heartbeat_ages": await heartbeat_ages(store, time.time()),
        "oldest_pending": oldest["t"] if oldest else None,
        "events": {r["kind"]: r["n"] for r in kinds},
        "container_errors": errors["n"] if errors else 0,
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
