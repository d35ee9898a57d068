"""Where users' containers go: pure decisions over a snapshot of server room.

Best fit: a user goes to the server that accepts work (active, fresh heartbeat, not
cordoned, not draining) and has the LEAST free memory that still fits its plan in
both memory and CPU. Full servers stay full and lightly used ones empty out, so the
autoscaler can delete them. Ties go to the lower server id, so a decision can be
replayed. `place` packs many users at once in O(users x log servers) (bisect over
servers sorted by free memory), fast enough for 100,000 users over 1,000 servers
well under a second (bench/placement.py). The sorted lists are `Orders`, which also
change one room at a time: the room index (control/users/room_index.py) keeps one for
the whole fleet, so that one more user costs O(log servers), not a sort.

Volumes (issue 13): a user whose data is on a volume (`Demand.location`) only goes to
servers in that location, and a user that needs a volume attached (`Demand.volume`)
only to a server with a free attachment slot (`Room.volume_slots`: Hetzner attaches at
most MAX_VOLUMES_PER_SERVER to a server), counted like memory and CPU. A room whose
location is not known (a server not yet created) is taken to be anywhere.

Agent features (control/users/features.py): a user goes only to a server whose agent
declared every feature its spec needs (`Demand.features` <= `Room.features`). A room
with `features` None is a server not yet created, which will run this version's agent.
`Orders` keeps one sorted list per distinct (feature set, location) and searches only
those that cover the demand: O(users x lists x log servers), and agents of only a few
versions, in a few locations, ever run at once.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
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

    @property
    def overfull(self) -> bool:
        """Its users take more than it has (a plan grew in place: control/billing/rules.py)."""
        return self.memory_free_mb < 0 or self.cpus_free + _EPSILON < 0


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
_Key = tuple[frozenset[str] | None, str | None]  # (features, location) of a sorted list
_Free = tuple[int, float, int]  # free memory, CPUs and volume slots


class Orders:
    """Rooms by server id, and those that accept work in one list sorted by free memory
    per (feature set, location). `put` changes one room in O(log n) comparisons (a
    bisect, then one list insert or delete: a memmove of at most n pointers); `take`
    places one user in O(lists x log n) (a walk past rooms that fit in memory but not
    in CPU or volume slots aside) and counts it in what is free there, not in `rooms`.
    Within `trial()`, every change is undone on exit: what a placement tries before its
    transaction commits (control/users/room_index.py)."""

    def __init__(self, rooms: Iterable[Room] = ()) -> None:
        self.rooms: dict[str, Room] = {room.server_id: room for room in rooms}
        self._free: dict[str, _Free] = {}  # servers that accept work: what is left
        self._keys: dict[str, _Key] = {}  # their sorted list
        self._orders: dict[_Key, _Order] = {}
        for room in self.rooms.values():
            if room.accepts_work:
                self._add(room, sort=False)
        for order in self._orders.values():
            order.sort()
        self._undo: dict[str, Room | None] | None = None

    def put(self, server_id: str, room: Room | None) -> None:
        """`room` is now the server's room (None: it has none: not active)."""
        self._remember(server_id)
        self._remove(server_id)
        if room is None:
            self.rooms.pop(server_id, None)
            return
        self.rooms[server_id] = room
        if room.accepts_work:
            self._add(room, sort=True)

    @contextmanager
    def trial(self) -> Iterator[None]:
        self._undo = {}
        try:
            yield
        finally:
            undo, self._undo = self._undo, None
            for server_id, room in undo.items():
                self.put(server_id, room)

    def best(self, demand: Demand, exact_location: str | None = None) -> str | None:
        """The server that fits `demand` with the least free memory (ties: the lower id);
        with `exact_location`, only among servers known to be there."""
        best: tuple[int, str] | None = None
        for (features, location), order in self._orders.items():
            if not _covers(features, demand) or not _in_place(location, demand, exact_location):
                continue
            found = self._first_fit(order, demand)
            if found is not None and (best is None or found < best):
                best = found
        return best[1] if best else None

    def take(self, demand: Demand, exact_location: str | None = None) -> str | None:
        """Places `demand` as `best` chooses and counts it in what that server has free."""
        server_id = self.best(demand, exact_location)
        if server_id is not None:
            self._remember(server_id)
            memory, cpus, slots = self._free[server_id]
            order = self._orders[self._keys[server_id]]
            del order[bisect.bisect_left(order, (memory, server_id))]
            memory -= demand.memory_mb
            slots -= 1 if demand.volume else 0
            self._free[server_id] = (memory, cpus - demand.cpus, slots)
            bisect.insort(order, (memory, server_id))
        return server_id

    def _first_fit(self, order: _Order, demand: Demand) -> tuple[int, str] | None:
        """The entry of `order` with the least free memory that fits `demand`."""
        i = bisect.bisect_left(order, (demand.memory_mb, ""))
        while i < len(order):
            _, cpus, slots = self._free[order[i][1]]
            if cpus + _EPSILON >= demand.cpus and (slots > 0 or not demand.volume):
                return order[i]
            i += 1  # fits in memory but not in CPU or volumes: try the next larger room
        return None

    def _remember(self, server_id: str) -> None:
        if self._undo is not None and server_id not in self._undo:
            self._undo[server_id] = self.rooms.get(server_id)

    def _add(self, room: Room, sort: bool) -> None:
        key, free = (room.features, room.location), room.memory_free_mb
        self._keys[room.server_id] = key
        self._free[room.server_id] = (free, room.cpus_free, room.volume_slots)
        order = self._orders.setdefault(key, [])
        if sort:
            bisect.insort(order, (free, room.server_id))
        else:
            order.append((free, room.server_id))

    def _remove(self, server_id: str) -> None:
        key = self._keys.pop(server_id, None)
        if key is None:
            return
        order = self._orders[key]
        del order[bisect.bisect_left(order, (self._free.pop(server_id)[0], server_id))]
        if not order:
            del self._orders[key]


def _in_place(location: str | None, demand: Demand, exact: str | None) -> bool:
    if exact is not None:
        return location == exact
    return demand.location is None or location is None or location == demand.location


def place(demands: Iterable[Demand], rooms: Iterable[Room]) -> tuple[dict[str, str], list[str]]:
    """Places users in the order given. Returns (user id -> server id, unplaced ids)."""
    return place_in(Orders(rooms), demands)


def place_in(
    orders: Orders, demands: Iterable[Demand], exact_location: str | None = None
) -> tuple[dict[str, str], list[str]]:
    """`place` over `orders`, which it changes as users land (undo with `Orders.trial`)."""
    placed: dict[str, str] = {}
    unplaced: list[str] = []
    for demand in demands:
        server_id = orders.take(demand, exact_location)
        if server_id is None:
            unplaced.append(demand.user_id)
        else:
            placed[demand.user_id] = server_id
    return placed, unplaced
