"""Worker liveness: provisioning → active → unhealthy → dead.

`next_status` is the pure rule. A worker is unhealthy once it has missed three of
its heartbeat intervals and dead once DEAD_AFTER has passed. `last_seen` is never
earlier than the control plane's own start: after a restart every worker gets a
fresh grace, so a restart can never mass-declare the fleet dead.

`sweep` applies it to every live worker in one transaction, recording each change
as a `worker_status` event; a worker found dead has its bootstrap tokens revoked
(control/workers/servers.py `set_status`). The caller releases the dead workers'
users and places again.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiosqlite

from control.db import events
from control.db.store import Store, fetch_all
from control.workers import servers

LIVE_STATUSES = ("active", "unhealthy")
MISSED_INTERVALS = 3


def next_status(
    status: str,
    last_seen: float,
    now: float,
    *,
    interval: float,
    dead_after: float,
    started_at: float,
) -> str:
    if status not in LIVE_STATUSES:
        return status
    age = now - max(last_seen, started_at)
    if age > dead_after:
        return "dead"
    if age > MISSED_INTERVALS * interval:
        return "unhealthy"
    return "active"


def heartbeat_interval(
    base: float, live_workers: int, *, max_rate: float, dead_after: float
) -> float:
    """Interval handed to workers: the base, stretched when the fleet is so large that
    the base would exceed `max_rate` heartbeats per second, and always short enough
    that three missed intervals come well before DEAD_AFTER."""
    stretched = max(base, live_workers / max_rate)
    return min(stretched, longest_interval(dead_after))


def paced_over(live_workers: int, *, max_rate: float, dead_after: float) -> float | None:
    """The heartbeats per second a fleet this large sends once the interval can stretch
    no further (DEAD_AFTER caps it), or None while it stays within `max_rate`."""
    rate = live_workers / longest_interval(dead_after)
    return rate if rate > max_rate else None


@dataclass(frozen=True)
class Swept:
    dead: list[str]  # newly dead: their users must be released
    unhealthy: list[str]  # newly unhealthy: a heartbeat that revives one makes room
    active: list[str]  # back to active: room may have appeared


# Only the live workers whose status may change: SQLite skips the rest of a 10k fleet in
# C, inside the write lock that heartbeats wait on (reading every row into Python held it
# 35-110 ms at 10k). `next_status` decides on what it returns: the 1 s margins make the
# filter a superset of the rows it changes, whatever the float rounding.
_SEEN = "MAX(COALESCE(last_heartbeat, registered_at, 0), ?2)"  # ?1 now, ?2 started at
_MISSED = f"{MISSED_INTERVALS} * COALESCE(heartbeat_interval, ?4)"  # ?4 the longest
CANDIDATES_SQL = (
    "SELECT id, status, last_heartbeat, registered_at, heartbeat_interval FROM servers "
    "WHERE status IN ('active', 'unhealthy') AND ("
    f"(status = 'active' AND {_SEEN} < ?1 - {_MISSED} + 1) OR (status = 'unhealthy' "
    f"AND ({_SEEN} < ?1 - ?3 + 1 OR {_SEEN} > ?1 - {_MISSED} - 1)))"  # ?3 dead after
)


def longest_interval(dead_after: float) -> float:
    """The longest interval any worker is handed (control/fleet.py `interval`)."""
    return dead_after / (MISSED_INTERVALS + 1)


async def sweep(store: Store, now: float, started_at: float, dead_after: float) -> Swept:
    """Applies `next_status` to every live worker, in one transaction."""

    async def apply(conn: aiosqlite.Connection) -> Swept:
        rows = await fetch_all(
            conn, CANDIDATES_SQL, (now, started_at, dead_after, longest_interval(dead_after))
        )
        swept = Swept([], [], [])
        for row in rows:
            last_seen = row["last_heartbeat"] or row["registered_at"] or 0.0
            new = next_status(
                row["status"],
                last_seen,
                now,
                # None: never handed one (a row written by hand); the longest any gets.
                interval=row["heartbeat_interval"] or longest_interval(dead_after),
                dead_after=dead_after,
                started_at=started_at,
            )
            if new == row["status"]:
                continue
            await servers.set_status(conn, row["id"], new, now)  # dead: tokens revoked
            age = now - max(last_seen, started_at)
            await events.record(
                conn,
                "worker_status",
                f"{row['status']} -> {new}: no heartbeat for {age:.0f}s",
                server_id=row["id"],
                at=now,
            )
            {"dead": swept.dead, "unhealthy": swept.unhealthy}.get(new, swept.active).append(
                row["id"]
            )
        return swept

    return await store.write(apply)
