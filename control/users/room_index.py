"""The room each active server has, kept in memory (issue 16): placement without a
scan of the fleet.

Contract:
- A `RoomIndex` holds what `rooms()` (control/users/rooms.py) returns for every active
  server, and the memory and CPUs used on every COUNTED server (all but dead and
  deleted: the fleet summary's capacity, `used()`), as of the last committed write. The app owns one (the Fleet's `room_index`);
  `attach(store)`, once at start-up, hooks it to the store and rebuilds it with the
  whole `rooms()` read, in one write transaction. Unattached (`RoomIndex(plans,
  reserve)` alone), every call reads the whole fleet, as `rooms()` does.
- Nothing is missed because no writer is asked to report: TEMP triggers on the store's
  write connection (on users, servers, volumes and relocations: every insert and
  delete, and every update that changes a column a room depends on, `WATCHED`) hand
  the servers each row touches (its old and new server_id, moving_from, source_server,
  a server's own id, the server of the user a volume or relocation belongs to) to this
  index. The store's commit hook re-reads just those servers (`rooms(only=...)`, each
  query through a server index) in the write's own transaction and applies them after
  COMMIT, under the write lock. A write that rolls back changes nothing here (the
  servers it touched are re-read, unchanged, at the next commit).
- `place` and `room` run inside a write transaction and see its own writes: the
  servers it touched so far are re-read first. `place` tries its users over the index
  in `Orders.trial` and undoes every change before it returns, with no await in
  between, so no other coroutine ever sees a room that was only tried. One user costs
  O(lists x log servers) (control/users/placement.py `Orders`), not a read of the fleet.
- Another connection's writes (an operator's sqlite3 shell; the store's lock file keeps
  other control planes out) are not seen by the triggers, but SQLite's data_version
  shows them: the next write rebuilds the index whole, placement decides on a whole
  read meanwhile, and `synced()` brings the index up to date for a reader.
- On PostgreSQL (control/db/postgres.py, several replicas on one database) permanent
  triggers log the same rows' servers, numbered (control/users/room_feed_pg.py), and
  every write transaction re-reads the servers logged since the index last applied
  the log: this replica's and the other replicas' alike (their writes never interleave:
  they share one write lock), one statement to ask. A psql session's write, which
  the log cannot order, makes the next write rebuild the index whole, as on SQLite.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

import aiosqlite

from control.db.store import AfterCommit, Store, fetch_one
from control.plans import Plan
from control.users.placement import Demand, Orders, Room, place_in
from control.users.rooms import Reserve, rooms, rooms_by_status

if TYPE_CHECKING:  # PostgreSQL's modules load only on PostgreSQL (control/db/backend.py)
    from control.users.room_feed_pg import Feed

# Every status but dead and deleted: the servers whose users the fleet's capacity counts.
COUNTED = ("provisioning", "active", "unhealthy", "deleting")

_Found = tuple[str, Room]  # a server's status and room
_TOUCHED = "clawfleet_room_touched"  # the SQL function the triggers call
# Per table: the servers a row R touches, and the columns a room depends on (an
# update that changes none of them touches no room). Keep in step with rooms.py.
WATCHED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "servers": (
        ("{r}.id",),
        (
            "status",
            "cordoned",
            "draining",
            "overclaim",
            "memory_mb",
            "cpus",
            "location",
            "features",
        ),
    ),
    "users": (
        (
            "{r}.server_id",
            "{r}.moving_from",
            "(SELECT source_server FROM relocations WHERE user_id = {r}.id)",
        ),
        ("id", "server_id", "moving_from", "state", "plan"),
    ),
    "volumes": (
        ("{r}.server_id", "(SELECT server_id FROM users WHERE id = {r}.user_id)"),
        ("server_id", "state", "user_id"),
    ),
    "relocations": (("{r}.source_server",), ("source_server", "phase", "user_id")),
}


def trigger_sql() -> list[str]:
    """The TEMP triggers that report touched servers, three per watched table."""
    statements = []
    for table, (touched, columns) in WATCHED.items():
        new = ", ".join(t.format(r="NEW") for t in touched)
        old = ", ".join(t.format(r="OLD") for t in touched)
        changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in columns)
        head = f"CREATE TEMP TRIGGER IF NOT EXISTS room_index_{table}"
        statements += [
            f"{head}_insert AFTER INSERT ON main.{table} BEGIN SELECT {_TOUCHED}({new}); END",
            f"{head}_delete AFTER DELETE ON main.{table} BEGIN SELECT {_TOUCHED}({old}); END",
            f"{head}_update AFTER UPDATE OF {', '.join(columns)} ON main.{table} "
            f"WHEN {changed} BEGIN SELECT {_TOUCHED}({old}, {new}); END",
        ]
    return statements


async def _nothing(conn: aiosqlite.Connection) -> None:
    """A write with no changes of its own: its commit hook does the work."""


class RoomIndex:
    def __init__(self, plans: dict[str, Plan], reserve: Reserve) -> None:
        self._plans = plans
        self._reserve = reserve
        self._orders = Orders()  # the active servers' rooms
        # The same rooms as of the last commit, for readers outside a write: a
        # placement's trial changes `_orders` on the store's write thread meanwhile.
        self._rooms: dict[str, Room] = {}
        self._used: dict[str, tuple[int, float]] = {}  # counted servers' memory and CPUs used
        self._touched: set[str] = set()  # servers touched since the last commit hook
        self._version: int | None = None  # the write connection's data_version, as read
        self._store: Store | None = None
        self._feed: Feed | None = None  # on PostgreSQL: where the other replicas' writes are
        self.ready = False  # rebuilt, and kept in step by the triggers

    async def attach(self, store: Store) -> None:
        """Hooks the index to `store`, the one it will see every write of, and rebuilds
        it from there (once)."""
        if self._store is None:
            self._store = store
            if store.postgres:
                from control.users.room_feed_pg import Feed

                self._feed = Feed()
            store.add_commit_hook(self._before_commit)
            await store.write(_nothing)

    async def synced(self) -> None:
        """Applies what another connection wrote since the last write of this store (an
        operator's sqlite3 shell), through an empty write whose hook rebuilds the index;
        without the write lock when nothing was written elsewhere (the usual case: a
        dashboard's summary must not queue behind the heartbeats' writes)."""
        if self._store is None:
            return
        if self._feed is not None:
            moved = await self._feed.moved(self._store)
        else:
            moved = await self._store.data_version() != self._version
        if moved:
            await self._store.write(_nothing)

    def rooms(self) -> list[Room]:
        """Every active server's room as of the last commit (empty before `attach`)."""
        return list(self._rooms.values())

    def used(self) -> tuple[int, float]:
        """Memory (MB) and CPUs the users take on the COUNTED servers (a moving user on
        both of its servers), as of the last commit (nothing before `attach`)."""
        held = self._used.values()
        return sum(memory for memory, _ in held), math.fsum(cpus for _, cpus in held)

    async def place(
        self,
        conn: aiosqlite.Connection,
        demands: Iterable[Demand],
        exclude: str | None = None,
        exact_location: str | None = None,
    ) -> tuple[dict[str, str], list[str]]:
        """`placement.place` of `demands` over this transaction's rooms, less `exclude`'s,
        only in `exact_location` when given. Returns (user id -> server id, unplaced)."""
        changed = await self._changes(conn)
        if changed is None:  # this write's commit rebuilds the index
            fleet = await rooms(conn, self._plans, self._reserve)
            orders = Orders(r for r in fleet if r.server_id != exclude)
            return place_in(orders, demands, exact_location)
        fresh = await self._read(conn, changed) if changed else {}
        with self._orders.trial():  # no await inside: nobody else sees what is tried
            for server_id, found in fresh.items():
                self._orders.put(server_id, _active(found))
            if exclude is not None:
                self._orders.put(exclude, None)
            return place_in(self._orders, demands, exact_location)

    async def room(self, conn: aiosqlite.Connection, server_id: str) -> Room | None:
        """The server's room in this transaction; None when it is not active."""
        changed = await self._changes(conn)
        if changed is not None and server_id not in changed:
            return self._orders.rooms.get(server_id)
        return _active((await self._read(conn, [server_id]))[server_id])

    async def _read(
        self, conn: aiosqlite.Connection, server_ids: Collection[str] | None
    ) -> dict[str, _Found | None]:
        """The COUNTED servers' rooms (every one of them, with `server_ids` None)."""
        ids = None if server_ids is None else set(server_ids)
        read = await rooms_by_status(conn, self._plans, self._reserve, COUNTED, ids)
        found: dict[str, _Found | None] = {room.server_id: (s, room) for s, room in read}
        return {server_id: found.get(server_id) for server_id in ids or ()} | found

    def _touch(self, *server_ids: object) -> None:
        # Called by SQLite (on the store's connection thread) once per row a trigger sees.
        self._touched.update(s for s in server_ids if isinstance(s, str))

    async def _changes(self, conn: aiosqlite.Connection) -> set[str] | None:
        """The servers this transaction touched so far (on SQLite, since the last commit
        hook; on PostgreSQL, every replica's since the index last applied the log), or
        None when the index cannot be trusted: not built yet, or another connection
        wrote what the triggers could not report."""
        if not self.ready:
            return None
        if self._feed is not None:
            return await self._feed.changes(conn)
        return self._touched if await _data_version(conn) == self._version else None

    async def _before_commit(self, conn: aiosqlite.Connection) -> AfterCommit | None:
        touched = await self._changes(conn)
        if touched is None:  # at start-up, or written elsewhere: rebuild
            await self._install(conn)
            self._touched = set()  # the whole read below covers them
            if self._feed is not None:
                await self._feed.rebuilt(conn)
            version = await _data_version(conn) if self._feed is None else 0
            return functools.partial(self._load, await self._read(conn, None), version)
        self._touched = set()
        if not touched:
            return None
        return functools.partial(self._apply, await self._read(conn, touched))

    async def _install(self, conn: aiosqlite.Connection) -> None:
        """What reports touched servers: SQLite's TEMP triggers once; on PostgreSQL the
        permanent triggers once and the session's table at every rebuild."""
        if self._feed is not None:
            from control.users import room_feed_pg

            triggers = None if self.ready else room_feed_pg.trigger_sql(WATCHED)
            await self._feed.install(conn, triggers)
        elif not self.ready:
            await conn.create_function(_TOUCHED, -1, self._touch)
            for statement in trigger_sql():
                await conn.execute(statement)

    def _load(self, fleet: dict[str, _Found | None], version: int) -> None:
        self._version = version
        self._orders = Orders(room for found in fleet.values() if (room := _active(found)))
        self._rooms = dict(self._orders.rooms)
        self._used = {}
        self._apply(fleet, orders=False)
        self.ready = True

    def _apply(self, fresh: dict[str, _Found | None], orders: bool = True) -> None:
        for server_id, found in fresh.items():
            if orders:
                room = _active(found)
                self._orders.put(server_id, room)
                if room is None:
                    self._rooms.pop(server_id, None)
                else:
                    self._rooms[server_id] = room
            if found is None:
                self._used.pop(server_id, None)
            else:
                self._used[server_id] = (found[1].memory_used_mb, found[1].cpus_used)
        if self._feed is not None:
            self._feed.applied()


async def _data_version(conn: aiosqlite.Connection) -> int:
    row = await fetch_one(conn, "PRAGMA data_version")
    return int(row[0]) if row else 0


def _active(found: _Found | None) -> Room | None:
    """The room placement may use: an active server's, as `rooms()` lists them."""
    return found[1] if found is not None and found[0] == "active" else None
