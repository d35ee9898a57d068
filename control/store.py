"""SQLite store: one writer, versioned migrations, snapshot reads.

Contract:
- `open()` applies pending migrations; `close()` is safe to call twice.
- `write(fn)` runs `fn(conn)` inside one transaction (BEGIN IMMEDIATE … COMMIT) on
  the single write connection; writes never interleave, and an exception rolls the
  whole function back. Callers get `fn`'s result only after COMMIT.
- `fetch_all`/`fetch_one` read from a separate connection; WAL gives them a consistent
  snapshot without waiting for the writer.
- Only domain errors (control/errors.py) escape from functions built on this layer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from control.migrations import MIGRATIONS

log = logging.getLogger(__name__)
T = TypeVar("T")
Row = aiosqlite.Row
WriteFn = Callable[[aiosqlite.Connection], Awaitable[T]]

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    # NORMAL in WAL mode: a power loss can lose the last commits but never corrupts;
    # a process crash loses nothing committed.
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
)


class Store:
    def __init__(self, path: str) -> None:
        self.path = path
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._connect()
        try:
            await self._migrate(self._writer)
            self._reader = await self._connect()
        except BaseException:
            await self._close()
            raise
        # The database holds ciphertexts and user data: owner-only, like the secrets.
        os.chmod(self.path, 0o600)

    async def _connect(self) -> aiosqlite.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is
        # exactly one write function.
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = aiosqlite.Row
        for pragma in _PRAGMAS:
            await conn.execute(pragma)
        return conn

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        async with conn.execute("SELECT MAX(version) FROM schema_migrations") as cur:
            row = await cur.fetchone()
        current = (row[0] if row else None) or 0
        if current > len(MIGRATIONS):
            raise RuntimeError(
                f"database schema version {current} is newer than this build knows "
                f"({len(MIGRATIONS)}): upgrade the control plane"
            )
        for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
            await conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _statements(script):
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (version, time.time()),
                )
                await conn.execute("COMMIT")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            log.info("applied schema migration %d", version)

    async def close(self) -> None:
        # A shielded write may still be running for a caller that was cancelled:
        # let it commit before the connection goes away.
        async with self._lock:
            await self._close()

    async def _close(self) -> None:
        for attr in ("_reader", "_writer"):
            conn = getattr(self, attr)
            setattr(self, attr, None)
            if conn is not None:
                await conn.close()

    async def write(self, fn: WriteFn[T]) -> T:
        # Shielded: a caller that goes away (client disconnect, shutdown) must not
        # leave a transaction half-applied or an acknowledged write unknown.
        return await asyncio.shield(self._write(fn))

    async def _write(self, fn: WriteFn[T]) -> T:
        conn = self._require(self._writer)
        async with self._lock:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                result = await fn(conn)
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")
            return result

    async def fetch_all(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        return await fetch_all(self._require(self._reader), sql, params)

    async def fetch_one(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        return await fetch_one(self._require(self._reader), sql, params)

    @staticmethod
    def _require(conn: aiosqlite.Connection | None) -> aiosqlite.Connection:
        if conn is None:
            raise RuntimeError("store is not open")
        return conn


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


async def fetch_one(conn: aiosqlite.Connection, sql: str, params: Iterable[Any] = ()) -> Row | None:
    """A read inside a write function (sees the transaction's own changes)."""
    rows = await fetch_all(conn, sql, params)
    return rows[0] if rows else None


async def fetch_all(conn: aiosqlite.Connection, sql: str, params: Iterable[Any] = ()) -> list[Row]:
    # One round trip to SQLite's thread (execute + fetch + close in one call).
    return list(await conn.execute_fetchall(sql, tuple(params)))
