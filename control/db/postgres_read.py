"""A sync psycopg connection on its own thread: what `PostgresStore.read` runs on.

Contract (control/db/read_thread.py's, on PostgreSQL): `open()` starts one thread and
connects there. `run(fn)` runs `fn(conn)` on that thread inside one REPEATABLE READ,
READ ONLY transaction, always rolled back: every query of `fn` sees one snapshot, and
a write in it fails (SQLSTATE 25006). `conn` is control/db/postgres_conn.py's
`ReadConnection` (`conn.execute(sql, params).fetchone()`, as `sqlite3.Connection`). A
connection the server dropped is opened again by the next `run`. `close()` closes the
connection on its thread, then ends the thread; it is safe to call twice. psycopg
errors propagate unchanged (the store turns the database's own failures into
`StoreUnavailable`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
from psycopg.pq import TransactionStatus

from control.db.postgres_conn import ReadConnection, Row, configure, row_factory

T = TypeVar("T")
_BEGIN = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"


class PostgresReadThread:
    def __init__(self, url: str) -> None:
        self._url = url
        self._pool: ThreadPoolExecutor | None = None
        self._conn: psycopg.Connection[Row] | None = None  # touched only on the pool's thread

    async def open(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="store-read")
        await self._on_thread(self._connection)

    async def run(self, fn: Callable[[Any], T]) -> T:
        return await self._on_thread(self._in_snapshot, fn)

    async def close(self) -> None:
        pool = self._pool
        self._pool = None
        if pool is None:
            return
        with contextlib.suppress(psycopg.Error):
            await asyncio.get_running_loop().run_in_executor(pool, self._disconnect)
        await asyncio.to_thread(pool.shutdown, wait=True)

    async def _on_thread(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _connection(self) -> psycopg.Connection[Row]:
        if self._conn is None or self._conn.closed:
            conn = psycopg.Connection.connect(self._url, autocommit=True, row_factory=row_factory)
            configure(conn)
            self._conn = conn
        return self._conn

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _in_snapshot(self, fn: Callable[[Any], T]) -> T:
        conn = self._connection()
        try:
            # BEGIN goes with fn's first query: one round trip less per read.
            return fn(ReadConnection(conn, begin=_BEGIN))
        finally:
            if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                try:
                    conn.execute("ROLLBACK")
                except psycopg.Error:
                    conn.close()  # in no state to trust: the next run connects again
