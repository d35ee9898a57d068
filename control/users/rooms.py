"""How much room each server has for users, read from the store.

Contract: read-only. `rooms` is the snapshot placement decides on
(control/users/placement.py); HOLDERS_SQL lists every server that must run a user's
container (its own, and during a move the one it is leaving), HELD_DATA_SQL every
server whose disk holds user data that must outlive the container.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiosqlite

from control.db.store import fetch_all
from control.plans import Plan
from control.users.placement import Room
from control.users.plans import plan_of


@dataclass(frozen=True)
class Reserve:
    """What each server keeps for itself before users get any of it."""

    memory_mb: int = 0
    cpus: float = 0.0


# Every (server, user) pair whose container the server must run.
HOLDERS_SQL = (
    "SELECT server_id AS holder, id, plan FROM users WHERE server_id IS NOT NULL "
    # A suspended user keeps its room: paying again brings it back on the same server.
    "AND state IN ('provisioning', 'running', 'suspended') "
    "UNION ALL SELECT moving_from AS holder, id, plan FROM users WHERE moving_from IS NOT NULL"
)


# Every (server, kind) whose disk holds user data that must outlive the container:
# a deprovisioned user's volumes until purged, a suspended user's until it resumes.
HELD_DATA_SQL = (
    "SELECT data_server_id AS holder, 'retained' AS kind, purge_after FROM users "
    "WHERE state = 'deprovisioned' AND data_server_id IS NOT NULL "
    "UNION ALL SELECT server_id AS holder, 'suspended' AS kind, NULL AS purge_after "
    "FROM users WHERE state = 'suspended' AND server_id IS NOT NULL"
)


async def rooms(
    conn: aiosqlite.Connection,
    plans: dict[str, Plan],
    reserve: Reserve,
    statuses: tuple[str, ...] = ("active",),
) -> list[Room]:
    """Room on servers in `statuses`. A user counts against every server that holds its
    container: its own and, during a move, the one it is leaving."""
    marks = ", ".join("?" for _ in statuses)
    servers = await fetch_all(
        conn,
        "SELECT id, status, cordoned, draining, overclaim, memory_mb, cpus FROM servers "
        f"WHERE status IN ({marks})",
        statuses,
    )
    used: dict[str, tuple[int, float]] = {}
    for row in await fetch_all(conn, HOLDERS_SQL):
        plan = plan_of(plans, row["plan"])
        mem, cpu = used.get(row["holder"], (0, 0.0))
        used[row["holder"]] = (mem + plan.memory_mb, cpu + plan.cpus)
    return [
        Room(
            server_id=s["id"],
            accepts_work=s["status"] == "active"
            and not s["cordoned"]
            and not s["draining"]
            # Over-claimed (control/workers/trust.py): no users until an operator clears it.
            and s["overclaim"] is None,
            memory_total_mb=max(0, (s["memory_mb"] or 0) - reserve.memory_mb),
            memory_used_mb=used.get(s["id"], (0, 0.0))[0],
            cpus_total=max(0.0, (s["cpus"] or 0) - reserve.cpus),
            cpus_used=used.get(s["id"], (0, 0.0))[1],
        )
        for s in servers
    ]
