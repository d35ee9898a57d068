"""What the room index (control/users/room_index.py) needs of PostgreSQL: which servers
any replica's writes touched since the index last looked, so that it follows the other
replicas' writes server by server instead of reading the whole fleet again.

Contract:
- `trigger_sql(watched)`: permanent row triggers on the tables of `WATCHED`
  (room_index.py's, the same rows and columns as SQLite's TEMP triggers), one PL/pgSQL
  function per table. In a replica's write session (`clawfleet.room_log` set on, by
  `Feed.install`) they append the servers each row touches to the log table `LOG`, one
  row each, numbered by its `seq`. A rolled-back write's rows are gone with it. In any
  other session (an operator's psql, a write connection opened again before its index
  rebuilt) they draw from the sequence `FOREIGN` instead: such a write does not hold
  the replicas' write lock, so its log rows could commit out of order, and the index
  rebuilds whole instead.
- A `Feed` is one index's position: the log's last `seq` it applied and `FOREIGN` as of
  its last rebuild. Called only inside the store's write transactions (the replicas'
  writes never interleave: control/db/postgres.py's write lock), except `moved`.
  - `install(conn, triggers)`: the log, the sequence and `triggers` when given (once
    per attach, under the migration lock, as replicas may attach at once), and the
    session's setting (each rebuild: a connection opened again has none).
  - `rebuilt(conn)`: the position a whole read made in this transaction stands at.
  - `changes(conn)`: the servers logged since the position (this transaction's own
    included), in one statement; None when the index must rebuild: a foreign write,
    or no look at the log for `LAPSE` seconds (rows are pruned after `KEEP`).
  - `applied()`: after COMMIT, the position moves to what `changes` or `rebuilt` read.
  - `moved(store)`: whether anything was logged or written from outside since the
    position, read without the write lock (a dashboard's summary).
"""

from __future__ import annotations

import time
from typing import Any, cast

import aiosqlite

from control.db.postgres_conn import WriteConnection
from control.db.postgres_schema import MIGRATE_LOCK
from control.db.store import Store

LOG = "clawfleet_room_log"  # written out in the statements that write it (one owner)
FOREIGN = "clawfleet_room_foreign"
SETTING = "clawfleet.room_log"
KEEP = 600.0  # seconds a log row is kept (database time)
LAPSE = 300.0  # an index that has not looked at the log for this long rebuilds
PRUNE_EVERY = 60.0

_SETUP = (
    f"CREATE TABLE IF NOT EXISTS {LOG} (seq BIGSERIAL PRIMARY KEY, server_id TEXT NOT NULL, "
    "at TIMESTAMPTZ NOT NULL DEFAULT now())",
    f"CREATE SEQUENCE IF NOT EXISTS {FOREIGN}",
)
# A sequence never drawn from reads last_value 1 as after its first draw: is_called
# tells them apart.
_DRAWN = "CASE WHEN is_called THEN last_value ELSE 0 END"
_HEAD = f"SELECT {_DRAWN}, (SELECT COALESCE(MAX(seq), 0) FROM {LOG}) FROM {FOREIGN}"
_SINCE = (
    f"SELECT {_DRAWN}, (SELECT COALESCE(MAX(seq), %(seen)s) FROM {LOG} WHERE seq > %(seen)s), "
    f"ARRAY(SELECT DISTINCT server_id FROM {LOG} WHERE seq > %(seen)s) FROM {FOREIGN}"
)
# The newest row stays: MAX(seq) must never go back (`moved` compares with it).
_PRUNE = (
    "DELETE FROM clawfleet_room_log WHERE at < now() - make_interval(secs => %s) "
    f"AND seq < (SELECT MAX(seq) FROM {LOG})"
)


def trigger_sql(watched: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]) -> list[str]:
    statements = []
    for table, (touched, columns) in watched.items():
        function = f"clawfleet_room_{table}"
        old = ", ".join(t.format(r="OLD") for t in touched)
        new = ", ".join(t.format(r="NEW") for t in touched)
        changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in columns)
        statements += [
            f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "DECLARE ids TEXT[] := ARRAY[]::TEXT[]; BEGIN "
            f"IF TG_OP <> 'INSERT' THEN ids := ids || ARRAY[{old}]::TEXT[]; END IF; "
            f"IF TG_OP <> 'DELETE' THEN ids := ids || ARRAY[{new}]::TEXT[]; END IF; "
            f"IF current_setting('{SETTING}', true) = 'on' THEN "
            "INSERT INTO clawfleet_room_log (server_id) SELECT DISTINCT s FROM unnest(ids) s "
            "WHERE s IS NOT NULL; "
            f"ELSE PERFORM nextval('{FOREIGN}'); END IF; RETURN NULL; END $$",
            f"CREATE OR REPLACE TRIGGER room_index_{table}_rows AFTER INSERT OR DELETE ON "
            f"{table} FOR EACH ROW EXECUTE FUNCTION {function}()",
            f"CREATE OR REPLACE TRIGGER room_index_{table}_update AFTER UPDATE OF "
            f"{', '.join(columns)} ON {table} FOR EACH ROW WHEN ({changed}) "
            f"EXECUTE FUNCTION {function}()",
        ]
    return statements


class Feed:
    def __init__(self) -> None:
        self.seen = 0  # the log's last seq the index applied
        self.foreign = 0  # FOREIGN as of the last rebuild
        self._read = 0  # the log's last seq read in the transaction under way
        self._looked = time.monotonic()  # when the index last looked at the log
        self._pruned = 0.0

    async def install(self, conn: aiosqlite.Connection, triggers: list[str] | None) -> None:
        write = cast(WriteConnection, conn)
        if triggers:
            await write.native("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
            for statement in (*_SETUP, *triggers):
                await write.native(statement)
        await write.native("SELECT set_config(%s, 'on', false)", (SETTING,))

    async def rebuilt(self, conn: aiosqlite.Connection) -> None:
        row = await (await cast(WriteConnection, conn).native(_HEAD)).fetchone()
        self.foreign, self._read = (int(row[0]), int(row[1])) if row else (0, 0)

    async def changes(self, conn: aiosqlite.Connection) -> set[str] | None:
        write = cast(WriteConnection, conn)
        now = time.monotonic()
        if now - self._looked > LAPSE:
            return None
        row = await (await write.native(_SINCE, {"seen": self.seen})).fetchone()
        if row is None or int(row[0]) != self.foreign:
            return None
        self._read, servers = int(row[1]), {str(s) for s in row[2]}
        if not servers:
            self._looked = now  # nothing new: the index is as current as the log
        if now - self._pruned > PRUNE_EVERY:
            self._pruned = now
            write.hold(_PRUNE, (KEEP,))
        return servers

    def applied(self) -> None:
        self.seen, self._looked = self._read, time.monotonic()

    async def moved(self, store: Store) -> bool:
        def head(conn: Any) -> tuple[int, int]:
            row = conn.raw.execute(_HEAD).fetchone()
            return (int(row[0]), int(row[1])) if row else (0, 0)

        return await store.read(head) != (self.foreign, self.seen)
