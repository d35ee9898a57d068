"""Placing users on servers and moving them, as store transactions.

Contract: each function runs in the caller's transaction, decides with the pure
rules of control/users/placement.py over the room index it is given
(control/users/room_index.py; without one, an unattached index: a read of the whole
fleet, `rooms.rooms`), writes through
control/users/records.py and records each decision as an event. It returns the
servers whose desired set changed; the caller bumps their generation in the same
transaction (control/workers/assignments.py `commit`) and wakes them after. `needs` is
the agent features every user's spec needs (control/users/features.py `fleet_needs`):
a user is placed or moved only onto a server whose agent declared them all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiosqlite

from control.db import events
from control.db.store import Row, fetch_all, fetch_one
from control.errors import Conflict, NotFound
from control.plans import Plan
from control.users import records
from control.users.features import withheld_reason
from control.users.placement import Demand, Room, place
from control.users.plans import plan_of
from control.users.room_index import RoomIndex
from control.users.rooms import Reserve


@dataclass(frozen=True)
class PlacementResult:
    placed: dict[str, str]  # user id -> server id
    pending: list[str]

    @property
    def touched_servers(self) -> set[str]:
        return set(self.placed.values())


def demand(
    plans: dict[str, Plan], user: Row, needs: frozenset[str], volumes: bool = False
) -> Demand:
    """What a user needs of a server: its plan's memory and CPU, the agent features its
    spec needs, and, when its data is on a volume (issue 13), a server in the volume's
    location; with `volumes` (a volume per user) or a volume, a free volume slot."""
    plan = plan_of(plans, user["plan"])
    location = user["location"]
    slot = volumes or location is not None
    return Demand(user["id"], plan.memory_mb, plan.cpus, location, slot, needs)


async def place_pending(
    conn: aiosqlite.Connection,
    plans: dict[str, Plan],
    reserve: Reserve,
    needs: frozenset[str],
    index: RoomIndex | None = None,
) -> PlacementResult:
    """Places every pending user that fits somewhere, oldest first."""
    now = time.time()
    pending = await fetch_all(
        # A user with an error (e.g. an unknown Stripe price) waits for the operator.
        conn,
        "SELECT u.id, u.plan, v.location FROM users u LEFT JOIN volumes v ON v.user_id = u.id "
        "WHERE u.state = 'pending' AND u.error IS NULL ORDER BY u.created_at, u.id",
    )
    if not pending:
        return PlacementResult({}, [])
    demands = [demand(plans, u, needs, reserve.volume_per_user) for u in pending]
    placed, waiting = await (index or RoomIndex(plans, reserve)).place(conn, demands)
    for user_id, server_id in placed.items():
        await records.set_state(conn, user_id, "provisioning", server_id, now)
        await events.record(
            conn,
            "user_placed",
            f"placed on {server_id}",
            server_id=server_id,
            user_id=user_id,
            at=now,
        )
    return PlacementResult(placed, waiting)


async def start_move(
    conn: aiosqlite.Connection,
    plans: dict[str, Plan],
    reserve: Reserve,
    user_id: str,
    target: str | None,
    reason: str,
    needs: frozenset[str],
    index: RoomIndex | None = None,
) -> tuple[str, str] | None:
    """Make-before-break: the user is assigned to `target` (or the best fit elsewhere)
    while its old server keeps running it until the new container reports healthy
    (control/workers/heartbeats.py). Returns (source, target), or None when nothing
    has room."""
    user = await fetch_one(
        conn,
        "SELECT u.*, v.location FROM users u LEFT JOIN volumes v ON v.user_id = u.id "
        "WHERE u.id = ?",
        (user_id,),
    )
    if user is None:
        raise NotFound(f"no user {user_id}")
    source = user["server_id"]
    _check_movable(user, target)
    rooms = index or RoomIndex(plans, reserve)
    wanted = demand(plans, user, needs, reserve.volume_per_user)
    if target is None:
        chosen = (await rooms.place(conn, [wanted], exclude=source))[0].get(user_id)
    else:
        room = await _target_room(conn, rooms, target)
        if lacks := withheld_reason(target, needs, room.features):
            raise Conflict(lacks, code="target_lacks_features")
        chosen = place([wanted], [room])[0].get(user_id)
    plan = plan_of(plans, user["plan"])
    if chosen is None:
        if target is not None:
            raise Conflict(f"server {target} has no room for plan {plan.name}", code="no_room")
        return None
    await records.begin_move(conn, user_id, source, chosen, time.time())
    await events.record(
        conn, "user_moving", f"{reason}: {source} -> {chosen}", server_id=source, user_id=user_id
    )
    return source, chosen


async def operator_move(
    conn: aiosqlite.Connection,
    plans: dict[str, Plan],
    reserve: Reserve,
    user_id: str,
    target: str | None,
    needs: frozenset[str],
    index: RoomIndex | None = None,
) -> tuple[str, str]:
    """An operator's move: as `start_move`, but no room anywhere is a 409 `no_room`."""
    moved = await start_move(conn, plans, reserve, user_id, target, "operator", needs, index)
    if moved is None:
        raise Conflict(f"no other server has room for {user_id}", code="no_room")
    return moved


async def start_relocation(
    conn: aiosqlite.Connection,
    plans: dict[str, Plan],
    reserve: Reserve,
    user: Row,
    target: str | None,
    location: str | None,
    needs: frozenset[str],
    index: RoomIndex | None = None,
) -> tuple[str, str]:
    """A move to another location (issue 13): the user (a row with its volume's
    `location`) is placed on `target`, or the best fit in `location`, counting the
    target's memory, CPU and a volume slot as any placement does, and no server runs it
    until its state is restored there (control/volumes/relocation.py). Returns (source,
    target); the caller records the move in the same transaction."""
    source = user["server_id"]
    _check_movable(user, target)
    rooms = index or RoomIndex(plans, reserve)
    room = None if target is None else await _target_room(conn, rooms, target)
    location = location or (room.location if room else None)
    if location is None or location == user["location"] or (room and room.location != location):
        raise Conflict(
            f"{target or location} is not in another location than {user['id']}'s volume",
            code="same_location",
        )
    if room is not None and (lacks := withheld_reason(room.server_id, needs, room.features)):
        raise Conflict(lacks, code="target_lacks_features")
    plan = plan_of(plans, user["plan"])
    wanted = Demand(user["id"], plan.memory_mb, plan.cpus, location, True, needs)
    if room is None:
        placed = await rooms.place(conn, [wanted], exclude=source, exact_location=location)
    else:
        placed = place([wanted], [room])
    chosen = placed[0].get(user["id"])
    if chosen is None:
        raise Conflict(f"no server in {location} has room for {user['id']}", code="no_room")
    now = time.time()
    await records.set_state(conn, user["id"], "provisioning", chosen, now)
    await events.record(
        conn,
        "user_moving",
        f"operator: {source} -> {chosen} in {location}, through a backup and a restore",
        server_id=source,
        user_id=user["id"],
        at=now,
    )
    return source, chosen


async def _target_room(conn: aiosqlite.Connection, rooms: RoomIndex, target: str) -> Room:
    room = await rooms.room(conn, target)
    if room is None:
        raise Conflict(
            f"server {target} is not active and accepting work", code="target_unavailable"
        )
    return room


def _check_movable(user: Row, target: str | None) -> None:
    user_id, source = user["id"], user["server_id"]
    if user["state"] not in ("provisioning", "running") or source is None:
        raise Conflict(
            f"user {user_id} is {user['state']}: only a placed user can move", code="not_movable"
        )
    if user["moving_from"] is not None:
        raise Conflict(
            f"user {user_id} is already moving from {user['moving_from']}", code="move_in_progress"
        )
    if target == source:
        raise Conflict(f"user {user_id} is already on {source}", code="same_server")
