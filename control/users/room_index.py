"""The room each active server has, kept in memory (issue 16): placement without a
scan of the fleet.

Contract:
- A `RoomIndex` holds what `rooms()` (control/users/rooms.py) returns for every active
  server, as of the last committed write. The app owns one (the Fleet's `room_index`);
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
- Only writes through the store's write connection are seen: the store's lock file
  makes it the only writer of the database.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable

import aiosqlite

from control.db.store import AfterCommit, Store
from control.plans import Plan
from control.users.placement import Demand, Orders, Room, place_in
from control.users.rooms import Reserve, rooms

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
        self._orders = Orders()
        self._touched: set[str] = set()  # servers touched since the last commit hook
        self._attached = False
        self.ready = False  # rebuilt, and kept in step by the triggers

    async def attach(self, store: Store) -> None:
        """Hooks the index to `store`, the one it will see every write of, and rebuilds
        it from there (once)."""
        if not self._attached:
            self._attached = True
            store.add_commit_hook(self._before_commit)
            await store.write(_nothing)

    def rooms(self) -> list[Room]:
        """Every active server's room as of the last commit (empty before `attach`)."""
        return list(self._orders.rooms.values())

    async def place(
        self,
        conn: aiosqlite.Connection,
        demands: Iterable[Demand],
        exclude: str | None = None,
        exact_location: str | None = None,
    ) -> tuple[dict[str, str], list[str]]:
        """`placement.place` of `demands` over this transaction's rooms, less `exclude`'s,
        only in `exact_location` when given. Returns (user id -> server id, unplaced)."""
        if not self.ready:
            fleet = await rooms(conn, self._plans, self._reserve)
            orders = Orders(r for r in fleet if r.server_id != exclude)
            return place_in(orders, demands, exact_location)
        fresh = await self._read(conn, self._touched) if self._touched else {}
        with self._orders.trial():  # no await inside: nobody else sees what is tried
            for server_id, room in fresh.items():
                self._orders.put(server_id, room)
            if exclude is not None:
                self._orders.put(exclude, None)
            return place_in(self._orders, demands, exact_location)

    async def room(self, conn: aiosqlite.Connection, server_id: str) -> Room | None:
        """The server's room in this transaction; None when it is not active."""
        if self.ready and server_id not in self._touched:
            return self._orders.rooms.get(server_id)
        return (await self._read(conn, [server_id]))[server_id]

    async def _read(
        self, conn: aiosqlite.Connection, server_ids: Collection[str]
    ) -> dict[str, Room | None]:
        ids = set(server_ids)
        found = {r.server_id: r for r in await rooms(conn, self._plans, self._reserve, only=ids)}
        return {server_id: found.get(server_id) for server_id in ids}

    def _touch(self, *server_ids: object) -> None:
        # Called by SQLite (on the store's connection thread) once per row a trigger sees.
        self._touched.update(s for s in server_ids if isinstance(s, str))

    async def _before_commit(self, conn: aiosqlite.Connection) -> AfterCommit | None:
        if not self.ready:
            await conn.create_function(_TOUCHED, -1, self._touch)
            for statement in trigger_sql():
                await conn.execute(statement)
            return functools.partial(self._load, await rooms(conn, self._plans, self._reserve))
        if not self._touched:
            return None
        touched, self._touched = self._touched, set()
        return functools.partial(self._apply, await self._read(conn, touched))

    def _load(self, fleet: list[Room]) -> None:
        self._orders = Orders(fleet)
        self.ready = True

    def _apply(self, fresh: dict[str, Room | None]) -> None:
        for server_id, room in fresh.items():
            self._orders.put(server_id, room)
