"""What the room index (control/users/room_index.py) needs of PostgreSQL: which servers a
write touched, and whether anyone else wrote.

Contract:
- `trigger_sql()`: permanent row triggers on the tables of `WATCHED` (room_index.py's,
  the same rows and columns as SQLite's TEMP triggers), one PL/pgSQL function per
  table. In a session that has the session-local table `TOUCHED` (the store's write
  connection, once its index is attached) they insert the servers each row touches
  there; it empties itself at COMMIT or ROLLBACK (ON COMMIT DELETE ROWS, and a rolled
  back insert is gone). In any other session (an operator's psql, another build's
  replica before its index attaches) they draw from the commits sequence instead, so
  that `data_version` moves for those writes too.
- `install(conn, triggers)`: (re)creates the triggers when `triggers` (once per
  attach, under the migration lock, as replicas may attach at once) and the session's
  `TOUCHED` table (each rebuild: a write connection opened again after the server
  dropped it has none, its triggers drew from the sequence, and the index rebuilt).
- `touched(conn)`: the servers this transaction touched so far (None without `TOUCHED`).
- `version(conn, drawn)`: the commits sequence's last value less `drawn`, what this
  process's store drew itself: it moves when another replica or session writes.
"""

from __future__ import annotations

from typing import cast

import aiosqlite

from control.db.postgres_conn import WriteConnection
from control.db.postgres_schema import COMMITS, MIGRATE_LOCK

TOUCHED = "clawfleet_room_touched"


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
            f"IF to_regclass('pg_temp.{TOUCHED}') IS NULL THEN "
            f"PERFORM nextval('{COMMITS}'); ELSE "
            # Unqualified: only the session's temporary table has this name.
            "INSERT INTO clawfleet_room_touched SELECT s FROM unnest(ids) s "
            "WHERE s IS NOT NULL; "
            "END IF; RETURN NULL; END $$",
            f"CREATE OR REPLACE TRIGGER room_index_{table}_rows AFTER INSERT OR DELETE ON "
            f"{table} FOR EACH ROW EXECUTE FUNCTION {function}()",
            f"CREATE OR REPLACE TRIGGER room_index_{table}_update AFTER UPDATE OF "
            f"{', '.join(columns)} ON {table} FOR EACH ROW WHEN ({changed}) "
            f"EXECUTE FUNCTION {function}()",
        ]
    return statements


async def install(conn: aiosqlite.Connection, triggers: list[str] | None) -> None:
    raw = cast(WriteConnection, conn).raw
    if triggers:
        await raw.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
        for statement in triggers:
            await raw.execute(statement)
    await raw.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {TOUCHED} (server_id TEXT) ON COMMIT DELETE ROWS"
    )


async def touched(conn: aiosqlite.Connection) -> set[str] | None:
    """None when the session has no `TOUCHED` table (opened again since the last
    rebuild): the index cannot know what this transaction touched, and rebuilds."""
    raw = cast(WriteConnection, conn).raw
    found = await (await raw.execute(f"SELECT to_regclass('pg_temp.{TOUCHED}')")).fetchone()
    if found is None or found[0] is None:
        return None
    cursor = await raw.execute(f"SELECT DISTINCT server_id FROM pg_temp.{TOUCHED}")
    return {str(row[0]) for row in await cursor.fetchall()}


async def version(conn: aiosqlite.Connection, drawn: int) -> int:
    raw = cast(WriteConnection, conn).raw
    row = await (await raw.execute(f"SELECT last_value FROM {COMMITS}")).fetchone()
    return (int(row[0]) if row else 0) - drawn
