"""SQLite store: one writer, versioned migrations, snapshot reads, private files.

Contract:
- `open()`, in this order: creates the database's directory 0700 when it is missing;
  takes an exclusive lock on `<db>.lock` (flock, held until `close()`: one control
  plane per database); creates the database file 0600 before SQLite first opens it
  and strips group/other bits from an existing database, `-wal` and `-shm` (SQLite
  creates those two with the database file's mode); applies pending migrations; and
  proves the database writable with a real write (`probe()`). Any failure closes what
  it opened (no connection thread or lock outlives it) and raises `StoreUnavailable`
  naming the cause: code `store_locked` when another process holds the lock,
  `schema_too_new` for a database newer than this build, else `store_unavailable`.
- `close()` is safe to call twice; it releases the lock.
- `write(fn)` runs `fn(conn)` inside one transaction (BEGIN IMMEDIATE … COMMIT) on
  the single write connection; writes never interleave, and an exception rolls the
  whole function back. Callers get `fn`'s result only after COMMIT. The transaction
  runs whole on the write connection's thread, one hop off the loop
  (control/db/sqlite_write.py): `fn` may await only its connection.
- `add_commit_hook(hook)`: after each write function, still in its transaction and on
  its thread, `await hook(conn)` runs (it sees the write's changes; raising rolls the
  write back as `fn` raising does) and may return a function that runs after COMMIT
  succeeds, on the event loop, still under the write lock, and must not fail: memory
  kept in step with the database (control/users/room_index.py) changes in commit
  order and never for a write that rolled back. `fn` and the hooks run in the
  caller's context (its context variables).
- `fetch_all`/`fetch_one` read from a separate connection; WAL gives them a consistent
  snapshot without waiting for the writer. Inside read_thread.py's `reads_apart()` (an
  admin request's reads) they run on `read`'s thread instead, each in its own snapshot.
- `read(fn)` runs the plain function `fn(conn)` in one read transaction on a third
  connection with its own thread (control/db/read_thread.py): one snapshot, one hop
  off the event loop (a long-poll's answer, control/workers/assignments.py).
- A failure of the database itself (read-only, I/O error, full disk, corrupt, busy
  beyond the timeout) leaves `write`, `fetch_*` and `probe` as `StoreUnavailable`
  (503 `store_unavailable`, with SQLite's cause), never as a raw sqlite3 error; any
  other exception from `fn` propagates unchanged. `failure` names the cause of the
  last failed write until a write succeeds again.
- Only domain errors (control/errors.py) escape from functions built on this layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fcntl
import functools
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import aiosqlite

from control.db.migrations import MIGRATIONS, statements
from control.db.read_thread import APART, SqliteThread, rows_of
from control.db.sqlite_write import transaction
from control.errors import ServiceUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
Row = aiosqlite.Row
WriteFn = Callable[[aiosqlite.Connection], Awaitable[T]]
Query = tuple[str, Iterable[Any]]
# What runs after COMMIT (None: nothing), as a commit hook returns it.
AfterCommit = Callable[[], None]
CommitHook = Callable[[aiosqlite.Connection], Awaitable[AfterCommit | None]]

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    # NORMAL in WAL mode: a power loss can lose the last commits but never corrupts;
    # a process crash loses nothing committed.
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
)
# Primary result codes that say the database itself cannot be used right now; any
# other error (a constraint, a bug in SQL) is not the store's to translate.
_STORAGE_CODES = frozenset(
    getattr(sqlite3, f"SQLITE_{name}")
    for name in "BUSY PERM READONLY IOERR CORRUPT FULL CANTOPEN PROTOCOL NOLFS NOTADB".split()
)
# Both backends record an applied migration with this (control/db/postgres.py too).
RECORD_MIGRATION = "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)"
# SQLite's companions of a database in WAL mode: they hold recent pages (raw Stripe
# payloads among them), so they are as private as the database.
COMPANIONS = ("-wal", "-shm")


class StoreUnavailable(ServiceUnavailable):
    code = "store_unavailable"


class Database:
    """Both stores (`Store`, control/db/postgres.py `PostgresStore`), told from a
    transaction's connection by `isinstance`. Type hints name `Store` (app.py casts)."""

    failure: str | None
    _log: logging.Logger  # each backend's own logger
    # Which backend, without importing PostgreSQL's driver on SQLite (control/db/backend.py).
    postgres = False

    async def write(self, fn: WriteFn[T]) -> T:
        # Shielded: a caller that goes away (client disconnect, shutdown) must not
        # leave a transaction half-applied or an acknowledged write unknown.
        try:
            result = await asyncio.shield(self._write(fn))
        except Exception as exc:  # each backend's own error types; others re-raised as is
            failure = self._storage_failure(exc)
            if failure is None:
                raise
            if self.failure is None:  # one line per outage, not one per refused write
                self._log.error("store: writes are failing: %s", failure.message)
            self.failure = failure.message
            raise failure from exc
        if self.failure is not None:
            self._log.warning("store: writes succeed again (after: %s)", self.failure)
            self.failure = None
        return result

    async def _write(self, fn: WriteFn[T]) -> T:
        raise NotImplementedError

    @staticmethod
    def _storage_failure(exc: BaseException) -> StoreUnavailable | None:
        """The domain error when `exc` is a failure of the database itself, else None."""
        raise NotImplementedError


def storage_failure(exc: BaseException) -> StoreUnavailable | None:
    """The domain error for a failure of the database itself, else None."""
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(exc, sqlite3.Error) or code is None or code & 0xFF not in _STORAGE_CODES:
        return None
    return StoreUnavailable(f"the database cannot be used: {exc}")


class Store(Database):
    def __init__(self, path: str) -> None:
        self.path = path
        self.failure: str | None = None  # cause of the last failed write, until one succeeds
        self._writes = SqliteThread(_PRAGMAS, query_only=False)  # every write's, one hop each
        self._reader: aiosqlite.Connection | None = None
        self._reads = SqliteThread(_PRAGMAS)  # `read`'s connection and thread
        self._lock_fd: int | None = None
        self._lock = asyncio.Lock()
        self._hooks: list[CommitHook] = []

    def add_commit_hook(self, hook: CommitHook) -> None:
        self._hooks.append(hook)

    async def data_version(self) -> int:
        """SQLite's `data_version` on the write connection: it moves only when another
        connection commits (an operator's sqlite3 shell). Read without the write lock, on
        the write connection's thread: after the write under way, if any."""
        return await self._writes.call(_data_version)

    async def open(self) -> None:
        try:
            Path(self.path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock_fd = _acquire_lock(self.path)
            _make_private(self.path)
            await self._writes.open(self.path)
            await self._writes.call(_migrate)
            self._reader = await self._connect()
            await self._reads.open(self.path)
            await self._write(_rewrite_user_version)
        except BaseException as exc:
            # A connection left open keeps its non-daemon thread, and with it a process
            # that failed to start, alive forever.
            await self._close()
            failure = _open_failure(self.path, exc)
            if failure is exc:
                raise
            raise failure from exc

    async def _connect(self) -> aiosqlite.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is
        # exactly one write function.
        conn = aiosqlite.connect(self.path, isolation_level=None)
        try:
            await conn
        except BaseException:
            # aiosqlite stops its thread without waiting: wait here, while the loop
            # (about to close after a failed start) can still take the thread's reply.
            await asyncio.to_thread(conn._thread.join)
            raise
        try:
            conn.row_factory = aiosqlite.Row
            for pragma in _PRAGMAS:
                await conn.execute(pragma)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def probe(self) -> None:
        """A real write that changes nothing. Raises StoreUnavailable when the database
        cannot be written."""
        await self.write(_rewrite_user_version)

    async def close(self) -> None:
        # A shielded write may still be running for a caller that was cancelled:
        # let it commit before the connection goes away.
        async with self._lock:
            await self._close()

    async def _close(self) -> None:
        try:
            conn, self._reader = self._reader, None
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    await conn.close()
            await self._reads.close()
            await self._writes.close()
        finally:
            fd, self._lock_fd = self._lock_fd, None
            if fd is not None:
                os.close(fd)  # releases the flock

    _storage_failure, _log = staticmethod(storage_failure), log

    async def _write(self, fn: WriteFn[T]) -> T:
        async with self._lock:
            # The whole transaction on the writer's thread (control/db/sqlite_write.py),
            # in the caller's context as asyncio.to_thread would: its log lines keep
            # the request's id.
            context = contextvars.copy_context()
            result, after = await self._writes.call(
                lambda conn: context.run(transaction, conn, fn, self._hooks)
            )
            for then in after:
                then()
            return result

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._reads.run(fn)
        except sqlite3.Error as exc:
            failure = storage_failure(exc)
            if failure is None:
                raise
            raise failure from exc

    async def fetch_all(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        if APART.get():  # an admin read: never queued behind the loops' reads
            return await self.read(rows_of(sql, params))
        if self._reader is None:
            raise RuntimeError("store is not open")
        try:
            return await fetch_all(self._reader, sql, params)
        except sqlite3.Error as exc:
            failure = storage_failure(exc)
            if failure is None:
                raise
            raise failure from exc

    async def fetch_one(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None


async def _rewrite_user_version(conn: aiosqlite.Connection) -> None:
    # Rewriting the header's user_version with its own value dirties a page, so the
    # commit really writes, without touching any table.
    row = await fetch_one(conn, "PRAGMA user_version")
    await conn.execute(f"PRAGMA user_version = {int(row[0]) if row else 0}")


def _migrate(conn: sqlite3.Connection) -> None:
    """Pending migrations, each in its own transaction (on the writer's thread)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
    )
    row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
    for version in pending_migrations(int(row[0] or 0) if row else 0):
        transaction(conn, functools.partial(_apply_migration, version=version), ())
        log.info("applied schema migration %d", version)


def pending_migrations(current: int) -> range:
    """The versions to apply over a database at `current` (both backends)."""
    if current > len(MIGRATIONS):
        raise StoreUnavailable(
            f"database schema version {current} is newer than this build knows "
            f"({len(MIGRATIONS)}): upgrade the control plane",
            code="schema_too_new",
        )
    return range(current + 1, len(MIGRATIONS) + 1)


async def _apply_migration(conn: aiosqlite.Connection, version: int) -> None:
    for statement in statements(MIGRATIONS[version - 1]):
        await conn.execute(statement)
    await conn.execute(RECORD_MIGRATION, (version, time.time()))


def _data_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


def _acquire_lock(path: str) -> int:
    lock_path = path + ".lock"
    # Not inherited (PEP 446): local workers outlive the control plane and must not
    # keep its lock.
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise StoreUnavailable(
            f"another control plane (pid {holder or 'unknown'}) is using {path}: "
            f"it holds {lock_path}; run one control plane per database",
            code="store_locked",
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _make_private(path: str) -> None:
    """0600 before SQLite first opens the database: SQLite creates -wal and -shm with
    the database's mode, so a database born 0644 leaks through them."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for name in (path, *(path + suffix for suffix in COMPANIONS)):
        try:
            st = os.stat(name)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            raise StoreUnavailable(f"{name} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if not mode & 0o077:
            continue
        # Only ever narrower: a database an operator made read-only stays so, and
        # the writability probe says so.
        try:
            os.chmod(name, mode & 0o600)
        except PermissionError:
            raise StoreUnavailable(
                f"{name} is readable by other users (mode {mode:04o}) and this user cannot "
                "change that: give it to the user the control plane runs as"
            ) from None


def _open_failure(path: str, exc: BaseException) -> BaseException:
    """What open() raises for `exc`: a StoreUnavailable naming the database and the
    cause when the database or its files are at fault, else `exc` itself."""
    if isinstance(exc, StoreUnavailable):
        return exc
    if isinstance(exc, OSError):
        where = exc.filename or path
        return StoreUnavailable(f"database {path}: {exc.strerror or exc} ({where})")
    if storage_failure(exc) is not None:
        return StoreUnavailable(f"database {path}: {exc}")
    return exc


async def fetch_one(conn: aiosqlite.Connection, sql: str, params: Iterable[Any] = ()) -> Row | None:
    """A read inside a write function (sees the transaction's own changes)."""
    return next(iter(await fetch_all(conn, sql, params)), None)


async def fetch_all(conn: aiosqlite.Connection, sql: str, params: Iterable[Any] = ()) -> list[Row]:
    # One round trip to SQLite's thread (execute + fetch + close in one call).
    return list(await conn.execute_fetchall(sql, tuple(params)))


async def fetch_each(conn: aiosqlite.Connection, queries: Sequence[Query]) -> list[list[Row]]:
    """Reads that do not depend on each other: on PostgreSQL one round trip."""
    if (each := getattr(conn, "fetch_each", None)) is not None:
        return cast(list[list[Row]], await each(queries))
    return [await fetch_all(conn, sql, params) for sql, params in queries]
