"""Autoscaling decisions: pure functions of a fleet snapshot, tested with tables.

Nothing here performs I/O; control/capacity/scaler.py gathers the snapshot, applies the
decisions and records each one as an event.

- `servers_needed`: how many new servers pending users and the warm headroom need,
  after counting room on servers that are already on the way, and where: a user whose
  volume is in a location (issue 13) needs a server there, so each new server carries
  the location of the oldest waiting user it is for (None: anywhere).
- `expected_headroom`: demand about to arrive (open checkouts, issue 15), per plan, in
  units of the default plan, which the warm headroom then keeps free on top of
  WARM_HEADROOM, so that the server is usually up before the payment arrives.
- `cap_creates`: MAX_SERVERS and MAX_CREATES_PER_RUN, never exceeded.
- `idle_to_delete`: empty servers past SCALE_DOWN_IDLE, above MIN_SERVERS, not needed
  for headroom, and (where the provider bills started hours) near the end of an hour.
- `held_by_server`, `kept_because`: a server whose disk holds users' data (a cancelled
  user's, kept RETENTION_DAYS; a suspended user's) is never deleted as idle nor finished
  by a drain, until data can follow users; the reason is shown on the server.
- `drain_action`: what a run does with a draining server.
- `provision_expired`: created servers that never registered in time.
- `retry_decision`: what a provider error means for the run.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from control.capacity.providers.base import ErrorKind
from control.clock import iso
from control.users.placement import Demand, Room, place
from shared.backoff import backoff_delay

HOUR = 3600.0
MAX_NEW_SERVERS_CONSIDERED = 1000  # a bound on the simulation, far above any cap


def units(room: Room, unit: Demand) -> int:
    """How many users of the unit's size still fit in a room."""
    if not room.accepts_work or unit.memory_mb <= 0:
        return 0
    by_memory = room.memory_free_mb // unit.memory_mb
    by_cpu = math.floor(room.cpus_free / unit.cpus + 1e-9) if unit.cpus > 0 else by_memory
    return max(0, min(by_memory, by_cpu))


@dataclass(frozen=True)
class Need:
    servers: int
    infeasible: list[str] = field(default_factory=list)  # users no server type can ever hold
    free_units: int = 0  # headroom the fleet will have, counting the new servers
    locations: list[str | None] = field(default_factory=list)  # per new server; None: any


def servers_needed(
    pending: list[Demand],
    active: list[Room],
    on_the_way: list[Room],
    new_server: Room,
    unit: Demand,
    headroom: int,
) -> Need:
    """Pending users (and users to move off draining servers) take room on active and
    booting servers first, then as many new servers as packing needs; then enough
    more servers for the warm headroom."""
    rooms = [*active, *on_the_way]
    if not pending:  # the usual run: no sorted lists to build over the whole fleet
        return _for_headroom(0, [], sum(units(r, unit) for r in rooms), new_server, unit, headroom)
    # Only rooms that could take the smallest pending user are packed: the rest can
    # never be chosen, and sorting the whole fleet held the loop for ~30 ms at 10k.
    memory, cpus = min(d.memory_mb for d in pending), min(d.cpus for d in pending)
    placed, left_ids = place(pending, [r for r in rooms if _could_take(r, memory, cpus)])
    left_set = set(left_ids)
    left = [d for d in pending if d.user_id in left_set]
    infeasible = [d.user_id for d in left if units(new_server, d) < 1]
    left = [d for d in left if units(new_server, d) >= 1]
    new: list[Room] = []
    locations: list[str | None] = []
    while left and len(new) < MAX_NEW_SERVERS_CONSIDERED:
        # Users tied to a location first: a server "anywhere" would take them in theory
        # and be created where they cannot go. Users without a volume fill what is left.
        where = next((d.location for d in left if d.location is not None), None)
        room = Room(
            f"new-{len(new)}",
            True,
            new_server.memory_total_mb,
            0,
            new_server.cpus_total,
            0.0,
            location=where,
        )
        locations.append(where)
        into, still = place(left, [room])
        new.append(_taken(room, [d for d in left if d.user_id in into]))
        still_set = set(still)
        left = [d for d in left if d.user_id in still_set]
    landed: dict[str, list[Demand]] = {}
    for d in pending:
        if d.user_id in placed:
            landed.setdefault(placed[d.user_id], []).append(d)
    after = (_taken(r, landed[r.server_id]) if r.server_id in landed else r for r in rooms)
    free = sum(units(r, unit) for r in after) + sum(units(r, unit) for r in new)
    need = _for_headroom(len(new), locations, free, new_server, unit, headroom)
    return Need(need.servers, infeasible, need.free_units, need.locations)


def _for_headroom(
    count: int,
    locations: list[str | None],
    free: int,
    new_server: Room,
    unit: Demand,
    headroom: int,
) -> Need:
    """`count` new servers (in `locations`) with `free` units among all, plus as many
    more (anywhere) as the warm headroom still wants."""
    per_server = units(new_server, unit)
    if free < headroom and per_server > 0:
        extra = math.ceil((headroom - free) / per_server)
        count += extra
        free += extra * per_server
        locations = [*locations, *[None] * extra]
    return Need(servers=count, free_units=free, locations=locations)


def expected_headroom(expected: Iterable[tuple[Demand, int]], unit: Demand) -> int:
    """(plan's size, users expected) -> the free units they will take, each user
    rounded up to whole units of the default plan (by memory or CPU, whichever is
    larger): a plan twice the default counts twice, a smaller one counts as one."""
    total = 0
    for size, count in expected:
        if count <= 0:
            continue
        by_memory = math.ceil(size.memory_mb / unit.memory_mb) if unit.memory_mb > 0 else 1
        by_cpu = math.ceil(size.cpus / unit.cpus - 1e-9) if unit.cpus > 0 else 1
        total += count * max(1, by_memory, by_cpu)
    return total


def _could_take(room: Room, memory_mb: int, cpus: float) -> bool:
    """Whether a room has the memory and CPU of the smallest demand (a bound: each
    demand also needs its location, a volume slot and its features)."""
    return room.accepts_work and room.memory_free_mb >= memory_mb and room.cpus_free + 1e-9 >= cpus


def _taken(room: Room, demands: list[Demand]) -> Room:
    return Room(
        room.server_id,
        room.accepts_work,
        room.memory_total_mb,
        room.memory_used_mb + sum(d.memory_mb for d in demands),
        room.cpus_total,
        room.cpus_used + sum(d.cpus for d in demands),
    )


@dataclass(frozen=True)
class Capped:
    create: int
    held_back: int
    reason: str | None  # the cap that held demand back, if any


def cap_creates(wanted: int, servers_now: int, max_servers: int, max_per_run: int) -> Capped:
    room_total = max(0, max_servers - servers_now)
    create = min(wanted, room_total, max_per_run)
    if create >= wanted:
        return Capped(create, 0, None)
    reason = (
        "MAX_SERVERS"
        if room_total <= max_per_run and room_total < wanted
        else "MAX_CREATES_PER_RUN"
    )
    return Capped(create, wanted - create, reason)


@dataclass(frozen=True)
class HeldData:
    retained: int = 0  # deprovisioned users whose volumes wait for their purge
    suspended: int = 0
    retained_until: float | None = None  # the last of their purges


def held_by_server(rows: Iterable[tuple[str, str, float | None]]) -> dict[str, HeldData]:
    """(server id, 'retained' | 'suspended', purge_after) rows -> what each server holds."""
    held: dict[str, HeldData] = {}
    for server_id, kind, purge_after in rows:
        h = held.get(server_id, HeldData())
        if kind == "suspended":
            held[server_id] = HeldData(h.retained, h.suspended + 1, h.retained_until)
        else:
            until = max(h.retained_until or 0.0, purge_after or 0.0) or None
            held[server_id] = HeldData(h.retained + 1, h.suspended, until)
    return held


def kept_because(held: HeldData | None) -> str | None:
    """Why a server must not be deleted although no container runs there, or None."""
    if held is None or (held.retained == 0 and held.suspended == 0):
        return None
    parts = []
    if held.retained:
        until = f" until {iso(held.retained_until)}" if held.retained_until else ""
        parts.append(f"{held.retained} cancelled user(s) kept{until} (RETENTION_DAYS)")
    if held.suspended:
        parts.append(f"{held.suspended} suspended user(s)")
    return "holds the data of " + " and ".join(parts)


DrainAction = Literal["move", "wait", "delete", "keep"]


def drain_action(users_left: int, moving: bool, kept: str | None) -> DrainAction:
    """Users move one at a time; an emptied server is deleted unless it holds data."""
    if users_left == 0:
        return "keep" if kept else "delete"
    return "wait" if moving else "move"


@dataclass(frozen=True)
class IdleServer:
    server_id: str
    empty_since: float
    billed_since: float  # when the provider started billing it (create confirmed)
    free_units: int  # what it contributes to headroom
    kept_because: str | None = None  # holds users' data: never deleted as idle


def near_hour_end(billed_since: float, now: float, window: float) -> bool:
    into_hour = (now - billed_since) % HOUR
    return into_hour >= HOUR - window


def idle_to_delete(
    idle: list[IdleServer],
    *,
    now: float,
    idle_after: float,
    servers_now: int,
    min_servers: int,
    fleet_free_units: int,
    headroom: int,
    bills_hourly: bool,
    billing_window: float,
) -> list[str]:
    """Empty servers to delete now, soonest-billed first. Each deletion must leave the
    fleet at or above MIN_SERVERS and the warm headroom; a server holding users' data
    is not empty."""
    ready = [s for s in idle if now - s.empty_since >= idle_after and s.kept_because is None]
    if bills_hourly:
        # Deleting just after a billed hour starts wastes that hour: wait for its end.
        ready = [s for s in ready if near_hour_end(s.billed_since, now, billing_window)]
    ready.sort(key=lambda s: (HOUR - (now - s.billed_since) % HOUR, s.server_id))
    chosen: list[str] = []
    free = fleet_free_units
    count = servers_now
    for server in ready:
        if count - 1 < min_servers or free - server.free_units < headroom:
            continue
        chosen.append(server.server_id)
        free -= server.free_units
        count -= 1
    return chosen


def provision_expired(
    confirmed_at: float | None, registered_at: float | None, now: float, timeout: float
) -> bool:
    return registered_at is None and confirmed_at is not None and now - confirmed_at > timeout


@dataclass(frozen=True)
class RetryPlan:
    next_pair: bool  # try the next (server type, location)
    pause_scale_up: float  # seconds before creating again (0: not paused)
    alert: bool  # the operator must act


def retry_decision(
    kind: ErrorKind, attempt: int, retry_after: float | None, rng: random.Random | None = None
) -> RetryPlan:
    if kind == "unavailable":
        return RetryPlan(next_pair=True, pause_scale_up=0.0, alert=False)
    if kind == "limit":
        return RetryPlan(next_pair=False, pause_scale_up=HOUR, alert=True)
    if kind == "rate_limited":
        return RetryPlan(next_pair=False, pause_scale_up=max(retry_after or 60.0, 1.0), alert=False)
    if kind == "invalid":
        return RetryPlan(next_pair=False, pause_scale_up=600.0, alert=True)
    # transient (and anything unexpected): the shared backoff, 5 s doubling up to 300 s,
    # each +-20% (base 6 and cap 360 with a third of spread are exactly that range).
    pause = backoff_delay(attempt, base=6.0, cap=360.0, rand=(rng or random).random(), spread=1 / 3)
    return RetryPlan(next_pair=False, pause_scale_up=pause, alert=False)
