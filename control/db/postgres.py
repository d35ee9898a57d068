"""The store on PostgreSQL (issue 16): control/db/store.py's contract on a server.

Chosen by DATABASE_URL (control/db/backend.py); the room index keeps itself in step
through its own triggers (control/users/room_feed_pg.py).

Contract, as `Store`'s, with these differences:
- `PostgresStore(url)`: `open()` connects (a write connection, a read connection and
  `read`'s thread with its own), applies pending migrations (control/db/postgres_schema.py)
  while holding an advisory lock, so that replicas starting at once apply each one once,
  and proves the database writable (`probe()`). No lock file: several processes may
  share a database, and the write lock below keeps their writes apart. A failure closes
  what it opened and raises `StoreUnavailable` (`schema_too_new` for a database newer
  than this build, else `store_unavailable`, naming host, port and database, never a
  password).
- `write(fn)` runs `fn(conn)` in one transaction that first takes the advisory
  `WRITE_LOCK` (`pg_advisory_xact_lock`, released by COMMIT or ROLLBACK): writes never
  interleave, in this process (an asyncio lock) nor across processes, as BEGIN
  IMMEDIATE keeps SQLite's writers apart. `conn` is control/db/postgres_conn.py's
  `WriteConnection`, which takes the SQLite statements the write functions hold and
  holds back what answers nothing (BEGIN and the lock go with the first statement:
  its round trips). Commit hooks run as `Store`'s.
- `fetch_all`/`fetch_one` run each statement on the read connection (autocommit: each
  sees the last commit). `read(fn)` runs `fn` on its own thread in one REPEATABLE READ
  READ ONLY transaction: one snapshot, and a write in it fails as `StoreUnavailable`.
- `notify(channel, payload)` sends PostgreSQL's NOTIFY at once (control/leadership/nudges.py).
- `data_version()` moves when another process's write commits (every write draws from
  one sequence; the store counts what it drew itself).
- A failure of the database itself (control/db/postgres_conn.py `storage_failure`)
  is `StoreUnavailable` from `write`, `read`, `fetch_*` and `probe`; `failure` names it
  until a write succeeds again. A connection the server dropped is opened again by the
  next call that needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

import aiosqlite
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

from control.db import postgres_schema as schema
from control.db.postgres_conn import (
    Row,
    WriteConnection,
    configure,
    row_factory,
    storage_failure,
    storage_failures,
)
from control.db.postgres_read import PostgresReadThread
from control.db.store import (
    RECORD_MIGRATION,
    CommitHook,
    Database,
    StoreUnavailable,
    WriteFn,
    pending_migrations,
)

log = logging.getLogger(__name__)
_LOCK_AND_DRAW = f"SELECT pg_advisory_xact_lock(%s), nextval('{schema.COMMITS}')"
T = TypeVar("T")
AsyncConn = psycopg.AsyncConnection[Row]


class PostgresStore(Database):
    postgres = True

    def __init__(self, url: str) -> None:
        self.url = url
        self.failure: str | None = None
        self._writer: AsyncConn | None = None
        self._reader: AsyncConn | None = None
        self._reads = PostgresReadThread(url)
        self._lock = asyncio.Lock()
        self._hooks: list[CommitHook] = []
        self._drawn = 0  # how many values of the commits sequence this store drew
        self._opened = False

    def add_commit_hook(self, hook: CommitHook) -> None:
        self._hooks.append(hook)

    async def open(self) -> None:
        try:
            self._opened = True
            writer = await self._connection("_writer")
            await _migrate(writer)
            await self._connection("_reader")
            await self._reads.open()
            await self.probe()
        except BaseException as exc:
            await self._close()
            if isinstance(exc, StoreUnavailable):
                raise
            if storage_failure(exc) is None:
                raise
            raise StoreUnavailable(f"database {where(self.url)}: {exc}") from exc

    async def _connection(self, attr: str) -> AsyncConn:
        """The connection `attr` names, opened (again, after the server dropped it)."""
        conn: AsyncConn | None = getattr(self, attr)
        if not self._opened:
            raise RuntimeError("store is not open")
        if conn is None or conn.closed:
            conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, row_factory=row_factory
            )
            configure(conn)
            setattr(self, attr, conn)
        return conn

    async def data_version(self) -> int:
        async with self._lock:
            reader = await self._connection("_reader")
            row = await (
                await reader.execute(f"SELECT last_value FROM {schema.COMMITS}")
            ).fetchone()
            last = int(row[0]) if row else 0
            return last - self._drawn

    async def probe(self) -> None:
        """A real write (it takes a transaction id, which its COMMIT writes to the WAL)
        that changes no table."""

        async def xid(conn: aiosqlite.Connection) -> None:
            await cast(WriteConnection, conn).native("SELECT pg_current_xact_id()")

        await self.write(xid)

    async def close(self) -> None:
        async with self._lock:
            await self._close()

    async def _close(self) -> None:
        self._opened = False
        for attr in ("_reader", "_writer"):
            conn: AsyncConn | None = getattr(self, attr)
            setattr(self, attr, None)
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    await conn.close()
        await self._reads.close()

    _storage_failure, _log = staticmethod(storage_failure), log

    async def _write(self, fn: WriteFn[T]) -> T:
        async with self._lock:
            raw = await self._connection("_writer")
            # The write functions take aiosqlite's connection; this one answers the
            # same calls (control/db/postgres_conn.py), and holds back what answers
            # nothing: BEGIN and the lock go with the first statement, the last
            # changes with COMMIT.
            write = WriteConnection(raw, holds=True)
            write.hold("BEGIN")
            write.hold(_LOCK_AND_DRAW, (schema.WRITE_LOCK,))
            conn = cast(aiosqlite.Connection, write)
            try:
                result = await fn(conn)
                after = [then for hook in self._hooks if (then := await hook(conn))]
                await write.native("COMMIT")
            except BaseException:
                write.drop_held()
                await self._rolled_back(raw)
                raise
            self._drawn += 1
            for then in after:
                then()
            return result

    async def _rolled_back(self, raw: AsyncConn) -> None:
        if raw.closed or raw.info.transaction_status == TransactionStatus.IDLE:
            return  # nothing was sent, or the connection is gone with its transaction
        self._drawn += 1  # the lock's statement ran: a sequence's draw stays drawn
        with contextlib.suppress(psycopg.Error):
            await raw.execute("ROLLBACK")

    async def read(self, fn: Callable[[Any], T]) -> T:
        with storage_failures():
            return await self._reads.run(fn)

    async def fetch_all(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        with storage_failures():
            reader = await self._connection("_reader")
            return await WriteConnection(reader).execute_fetchall(sql, params)

    async def fetch_one(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None

    async def notify(self, channel: str, payload: str) -> None:
        """PostgreSQL's NOTIFY, on the read connection: it commits at once."""
        with storage_failures():
            reader = await self._connection("_reader")
            await reader.execute("SELECT pg_notify(%s, %s)", (channel, payload))


async def _migrate(conn: AsyncConn) -> None:
    """Applies pending migrations, each in its own transaction, under MIGRATE_LOCK."""
    await conn.execute("SELECT pg_advisory_lock(%s)", (schema.MIGRATE_LOCK,))
    try:
        for statement in schema.STORE_SETUP:
            await conn.execute(statement)
        row = await (await conn.execute("SELECT MAX(version) FROM schema_migrations")).fetchone()
        for version in pending_migrations(int(row[0] or 0) if row else 0):
            async with conn.transaction():
                for statement in schema.migration(version):
                    await conn.execute(statement, ())
                await WriteConnection(conn).execute(RECORD_MIGRATION, (version, time.time()))
            log.info("applied schema migration %d", version)
    finally:
        if not conn.closed:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (schema.MIGRATE_LOCK,))


def where(url: str) -> str:
    """Host, port and database of `url`: never its password."""
    with contextlib.suppress(psycopg.ProgrammingError):
        parts = conninfo_to_dict(url)
        return (
            f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"
        )
    return "(unparsable URL)"
