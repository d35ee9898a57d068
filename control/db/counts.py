"""Counts the database keeps by itself, read in O(1) by /v1/summary and /metrics (issue 16).

Contract: the tables `server_counts`, `user_counts`, `event_counts` and
`volume_counts` are written by the triggers of their migration (control/db/migrations.py)
and by nothing else: every INSERT, UPDATE and DELETE on servers, users, events and
volumes adjusts them in its own transaction, so they equal a fresh `COUNT(*) ... GROUP
BY` at every commit, and a rolled-back write leaves them as they were. They hold a row
per group ever seen, with `n = 0` once the group is empty; the reads here leave those
out, as a GROUP BY over the rows would. A read costs the number of groups (statuses,
states, server shapes, event kinds), never the number of rows.

Servers are counted by shape: status, server type, memory, CPUs, cordoned, draining
(a NULL type is kept as '' and a NULL size as -1, since a key cannot hold NULL), with
the containers whose error their last report carries.
"""

from __future__ import annotations

from control.db.store import Row, Store

LIVE = ("active", "unhealthy")


async def server_groups(store: Store, reserve_memory_mb: int, reserve_cpus: float) -> list[Row]:
    """Servers by status and type: `n`, how many are `cordoned` and `draining`, and their
    `memory_mb` and `cpus` less the reserve (none below 0; an unknown size counts 0)."""
    return await store.fetch_all(
        "SELECT status, NULLIF(server_type, '') AS server_type, SUM(n) AS n, "
        "SUM(cordoned * n) AS cordoned, SUM(draining * n) AS draining, "
        "SUM(MAX(0, memory_mb - ?) * n) AS memory_mb, SUM(MAX(0, cpus - ?) * n) AS cpus "
        "FROM server_counts WHERE n != 0 GROUP BY status, server_type",
        (reserve_memory_mb, reserve_cpus),
    )


async def servers_by_status(store: Store) -> dict[str, int]:
    rows = await store.fetch_all(
        "SELECT status, SUM(n) AS n FROM server_counts WHERE n != 0 GROUP BY status"
    )
    return {r["status"]: r["n"] for r in rows}


async def container_errors(store: Store) -> int:
    """Containers whose last report on a live (active, unhealthy) server holds an error."""
    row = await store.fetch_one(
        "SELECT COALESCE(SUM(container_errors), 0) AS n FROM server_counts "
        f"WHERE status IN ({', '.join('?' * len(LIVE))})",
        LIVE,
    )
    return int(row["n"]) if row else 0


async def users_by_state(store: Store) -> dict[str, int]:
    rows = await store.fetch_all(
        "SELECT state, SUM(n) AS n FROM user_counts WHERE n != 0 GROUP BY state"
    )
    return {r["state"]: r["n"] for r in rows}


async def events_by_kind(store: Store) -> dict[str, int]:
    rows = await store.fetch_all("SELECT kind, n FROM event_counts WHERE n != 0")
    return {r["kind"]: r["n"] for r in rows}


async def volume_totals(store: Store) -> tuple[int, int]:
    """How many volumes there are, and their size together in GB."""
    row = await store.fetch_one(
        "SELECT COALESCE(SUM(n), 0) AS n, COALESCE(SUM(size_gb), 0) AS size_gb FROM volume_counts"
    )
    return (int(row["n"]), int(row["size_gb"])) if row else (0, 0)
