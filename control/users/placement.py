"""Where users' containers go: pure decisions over a snapshot of server room.

Best fit: a user goes to the server that accepts work (active, fresh heartbeat, not
cordoned, not draining) and has the LEAST free memory that still fits its plan in
both memory and CPU. Full servers stay full and lightly used ones empty out, so the
autoscaler can delete them. Ties go to the lower server id, so a decision can be
replayed. `place` packs many users at once in O(users x log servers) (bisect over
servers sorted by free memory), fast enough for 100,000 users over 1,000 servers
well under a second (bench/placement.py).

Volumes (issue 13): a user whose data is on a volume (`Demand.location`) only goes to
servers in that location, and a user that needs a volume attached (`Demand.volume`)
only to a server with a free attachment slot (`Room.volume_slots`: Hetzner attaches at
most MAX_VOLUMES_PER_SERVER to a server), counted like memory and CPU. A room whose
location is not known (a server not yet created) is taken to be anywhere.

Agent features (control/users/features.py): a user goes only to a server whose agent
declared every feature its spec needs (`Demand.features` <= `Room.features`). A room
with `features` None is a server not yet created, which will run this version's agent.
`place` keeps one sorted list per distinct feature set and searches only those that
cover the demand: O(users x feature sets x log servers), and agents of only a few
versions ever run at once.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

MAX_VOLUMES_PER_SERVER = 16  # Hetzner's limit (docs.hetzner.com/cloud/volumes/faq)


@dataclass(frozen=True)
class Room:
    server_id: str
    accepts_work: bool
    memory_total_mb: int
    memory_used_mb: int
    cpus_total: float = 1e9
    cpus_used: float = 0.0
    location: str | None = None  # None: not known yet, any location fits
    volume_slots: int = MAX_VOLUMES_PER_SERVER  # volumes it can still have attached
    features: frozenset[str] | None = None  # its agent's; None: a new server, all of them

    @property
    def memory_free_mb(self) -> int:
        return self.memory_total_mb - self.memory_used_mb

    @property
    def cpus_free(self) -> float:
        return self.cpus_total - self.cpus_used


@dataclass(frozen=True)
class Demand:
    user_id: str
    memory_mb: int
    cpus: float = 0.0
    location: str | None = None  # where its volume is: only servers there will do
    volume: bool = False  # takes one of the server's volume attachment slots
    features: frozenset[str] = frozenset()  # agent features its spec needs


# Float CPU sums (0.1 + 0.2 ...) must not make an exact fit look like overcommit.
_EPSILON = 1e-9


def _covers(features: frozenset[str] | None, demand: Demand) -> bool:
    return features is None or demand.features <= features


def _volume_fits(location: str | None, slots: int, demand: Demand) -> bool:
    if demand.location is not None and location is not None and location != demand.location:
        return False
    return slots > 0 or not demand.volume


def choose_server(
    rooms: Iterable[Room], memory_mb: int, cpus: float = 0.0, demand: Demand | None = None
) -> str | None:
    """The best-fitting server for one user (`demand` adds its volume's needs), or None
    when nothing fits."""
    best: Room | None = None
    for room in rooms:
        if not room.accepts_work or room.memory_free_mb < memory_mb:
            continue
        if demand is not None and not (
            _volume_fits(room.location, room.volume_slots, demand)
            and _covers(room.features, demand)
        ):
            continue
        if room.cpus_free + _EPSILON < cpus:
            continue
        if best is None or (room.memory_free_mb, room.server_id) < (
            best.memory_free_mb,
            best.server_id,
        ):
            best = room
    return best.server_id if best else None


_Order = list[tuple[int, str]]  # (free memory, server id), sorted


def place(demands: Iterable[Demand], rooms: Iterable[Room]) -> tuple[dict[str, str], list[str]]:
    """Places users in the order given. Returns (user id -> server id, unplaced ids)."""
    # One sorted list per feature set; each entry's room is updated as users land on it.
    free: dict[str, tuple[int, float]] = {}
    where: dict[str, tuple[str | None, int]] = {}  # location and free volume slots
    orders: dict[frozenset[str] | None, _Order] = {}
    for room in rooms:
        if room.accepts_work:
            free[room.server_id] = (room.memory_free_mb, room.cpus_free)
            where[room.server_id] = (room.location, room.volume_slots)
            orders.setdefault(room.features, []).append((room.memory_free_mb, room.server_id))
    for order in orders.values():
        order.sort()
    placed: dict[str, str] = {}
    unplaced: list[str] = []
    for demand in demands:
        best: tuple[_Order, int] | None = None
        for features, order in orders.items():
            i = _first_fit(order, demand, free, where) if _covers(features, demand) else None
            if i is not None and (best is None or order[i] < best[0][best[1]]):
                best = (order, i)
        if best is None:
            unplaced.append(demand.user_id)
            continue
        order, i = best
        mem, server_id = order.pop(i)
        cpus = free[server_id][1]
        free[server_id] = (mem - demand.memory_mb, cpus - demand.cpus)
        bisect.insort(order, (mem - demand.memory_mb, server_id))
        if demand.volume:
            location, slots = where[server_id]
            where[server_id] = (location, slots - 1)
        placed[demand.user_id] = server_id
    return placed, unplaced


def _first_fit(
    order: _Order,
    demand: Demand,
    free: dict[str, tuple[int, float]],
    where: dict[str, tuple[str | None, int]],
) -> int | None:
    """The index of the entry of `order` with the least free memory that fits `demand`."""
    i = bisect.bisect_left(order, (demand.memory_mb, ""))
    while i < len(order) and (
        free[order[i][1]][1] + _EPSILON < demand.cpus
        or not _volume_fits(*where[order[i][1]], demand)
    ):
        i += 1  # fits in memory but not in CPU or volumes: try the next larger room
    return i if i < len(order) else None
