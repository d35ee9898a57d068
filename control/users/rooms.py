"""How much room each server has for users, read from the store.

Contract: read-only. `rooms` is the snapshot placement decides on
(control/users/placement.py); HOLDERS_SQL lists every server that must run a user's
container (its own, and during a move the one it is leaving), HELD_DATA_SQL every
server whose disk holds user data that must outlive the container (not a volume's),
`volume_use_sql` how many volume attachments each server has or is about to have. A
room carries the features its agent declared (none, if it never declared any).
`rooms(..., only=ids)` reads just those servers, each query through its server index:
what the room index (control/users/room_index.py) refreshes after each write, while
the whole read stays its start-up rebuild and its oracle in tests.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import aiosqlite

from control.db.store import Row, fetch_each
from control.plans import Plan
from control.users.features import parse
from control.users.placement import MAX_VOLUMES_PER_SERVER, Room
from control.users.plans import plan_of


@dataclass(frozen=True)
class Reserve:
    """What each server keeps for itself before users get any of it, and whether each
    user placed on it takes one of its volume attachment slots (USER_VOLUMES)."""

    memory_mb: int = 0
    cpus: float = 0.0
    volume_per_user: bool = False


# A move to another location (control/volumes/relocation.py) keeps the user's old volume
# on its source until the phase that detaches it: the source holds that user until then
# (its room, a volume slot, and no scale-down: before the snapshot it is the only copy).
SOURCE_HELD = (
    "('stopping', 'snapshot', 'creating', 'attaching', 'restoring', 'starting', 'releasing')"
)

# Every (server, user) pair whose container the server must run or whose state it holds.
HOLDERS_SQL = (
    "SELECT server_id AS holder, id, plan FROM users WHERE server_id IS NOT NULL "
    # A suspended user keeps its room: paying again brings it back on the same server.
    "AND state IN ('provisioning', 'running', 'suspended') "
    "UNION ALL SELECT moving_from AS holder, id, plan FROM users WHERE moving_from IS NOT NULL "
    "UNION ALL SELECT r.source_server AS holder, u.id, u.plan FROM relocations r "
    "JOIN users u ON u.id = r.user_id WHERE r.source_server IS NOT NULL "
    f"AND r.phase IN {SOURCE_HELD}"
)


# Every (server, kind) whose disk holds user data that must outlive the container:
# a deprovisioned user's volumes until purged, a suspended user's until it resumes.
HELD_DATA_SQL = (
    "SELECT data_server_id AS holder, 'retained' AS kind, purge_after FROM users "
    "WHERE state = 'deprovisioned' AND data_server_id IS NOT NULL "
    # Data on a volume (issue 13) outlives the server: the volume is detached and kept.
    "AND id NOT IN (SELECT user_id FROM volumes WHERE provider_id IS NOT NULL) "
    "UNION ALL SELECT server_id AS holder, 'suspended' AS kind, NULL AS purge_after "
    "FROM users WHERE state = 'suspended' AND server_id IS NOT NULL"
)


# Each server's volume attachments: volumes attached there (or on their way in or out)
# and the volumes of users placed there, wherever those volumes are now. With a volume
# per user, a user placed there counts before its volume exists: its volume is created
# and attached there next, and the slot must not go to another placement meanwhile.
# `among` (an IN list) narrows each arm to some servers, through its server index.
def volume_use_sql(volume_per_user: bool, among: str | None = None) -> str:
    join = "LEFT JOIN" if volume_per_user else "JOIN"
    held, state = (f"IN {among}", "+u.state") if among else ("IS NOT NULL", "u.state")
    return (
        "SELECT server, COUNT(DISTINCT user_id) AS n FROM ("
        "SELECT server_id AS server, user_id FROM volumes "
        f"WHERE server_id {held} AND state != 'detached' "
        "UNION SELECT source_server AS server, user_id FROM relocations "
        f"WHERE source_server {held} AND phase IN {SOURCE_HELD} "
        f"UNION SELECT u.server_id AS server, u.id AS user_id FROM users u "
        f"{join} volumes v ON v.user_id = u.id WHERE u.server_id {held} "
        f"AND {state} IN ('provisioning', 'running', 'suspended')) GROUP BY server"
    )


def holders_among(among: str) -> str:
    """HOLDERS_SQL of the servers `among` names (an IN list of three uses) only, each
    arm through its server index (`+state`: not through users_state)."""
    return (
        "SELECT server_id AS holder, id, plan FROM users WHERE server_id IN "
        f"{among} AND +state IN ('provisioning', 'running', 'suspended') "
        f"UNION ALL SELECT moving_from AS holder, id, plan FROM users WHERE moving_from IN {among} "
        "UNION ALL SELECT r.source_server AS holder, u.id, u.plan FROM relocations r "
        f"JOIN users u ON u.id = r.user_id WHERE r.source_server IN {among} "
        f"AND r.phase IN {SOURCE_HELD}"
    )


_CHUNK = 300  # servers per query: three IN lists stay under SQLite's 999 variables


async def rooms(
    conn: aiosqlite.Connection,
    plans: dict[str, Plan],
    reserve: Reserve,
    statuses: tuple[str, ...] = ("active",),
    only: Collection[str] | None = None,
) -> list[Room]:
    """Room on servers in `statuses` (and in `only`, when given: a few servers read
    through their indexes, as the room index refreshes them). A user counts against
    every server that holds its container: its own and, during a move, the one it is
    leaving."""
    return [room for _, room in await rooms_by_status(conn, plans, reserve, statuses, only)]


async def rooms_by_status(
    conn: aiosqlite.Connection,
    plans: dict[str, Plan],
    reserve: Reserve,
    statuses: tuple[str, ...],
    only: Collection[str] | None = None,
) -> list[tuple[str, Room]]:
    """`rooms`, each with its server's status."""
    if only is None:
        return await _rooms(conn, plans, reserve, statuses, [])
    ids = sorted(only)
    found: list[tuple[str, Room]] = []
    for start in range(0, len(ids), _CHUNK):
        found += await _rooms(conn, plans, reserve, statuses, ids[start : start + _CHUNK])
    return found


async def _rooms(
    conn: aiosqlite.Connection,
    plans: dict[str, Plan],
    reserve: Reserve,
    statuses: tuple[str, ...],
    ids: list[str],
) -> list[tuple[str, Room]]:
    """`rooms_by_status` of every server in `statuses` (`ids` empty), or of those in `ids`."""
    marks = ", ".join("?" for _ in statuses)
    among = "(" + ", ".join("?" for _ in ids) + ")" if ids else None
    servers, holders, volume_rows = await fetch_each(
        conn,
        [
            (
                "SELECT id, status, cordoned, draining, overclaim, memory_mb, cpus, location, "
                "features FROM servers "
                f"WHERE status IN ({marks})" + (f" AND id IN {among}" if among else ""),
                [*statuses, *ids],
            ),
            (holders_among(among) if among else HOLDERS_SQL, ids * 3),
            (volume_use_sql(reserve.volume_per_user, among), ids * 3),
        ],
    )
    used: dict[str, list[Plan]] = {}
    for row in holders:
        used.setdefault(row["holder"], []).append(plan_of(plans, row["plan"]))
    volumes = {r["server"]: int(r["n"]) for r in volume_rows}
    return [
        (s["status"], _room(s, reserve, used.get(s["id"], []), volumes.get(s["id"], 0)))
        for s in servers
    ]


def _room(server: Row, reserve: Reserve, held: list[Plan], volumes: int) -> Room:
    return Room(
        server_id=server["id"],
        accepts_work=server["status"] == "active"
        and not server["cordoned"]
        and not server["draining"]
        # Over-claimed (control/workers/trust.py): no users until an operator clears it.
        and server["overclaim"] is None,
        memory_total_mb=max(0, (server["memory_mb"] or 0) - reserve.memory_mb),
        memory_used_mb=sum(plan.memory_mb for plan in held),
        cpus_total=max(0.0, (server["cpus"] or 0) - reserve.cpus),
        # fsum: the same total in whatever order SQLite returns the holders, so a room
        # refreshed alone equals the same room read with the whole fleet.
        cpus_used=math.fsum(plan.cpus for plan in held),
        location=server["location"],
        volume_slots=max(0, MAX_VOLUMES_PER_SERVER - volumes),
        features=parse(server["features"]),
    )
