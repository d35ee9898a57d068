"""A plain SQLite connection that lives on its own thread: what `Store.read` runs on,
and (`query_only=False`) what the store's writes run on (control/db/sqlite_write.py).

Contract: `open(path)` starts one thread and opens the connection there, with the
store's pragmas and, unless told otherwise, `query_only` (a function given to `run` can
never write). `run(fn)` runs `fn(conn)` on that thread inside one read transaction
(BEGIN ... ROLLBACK): every query of `fn` sees one snapshot, and all of them cost one
hop off the event loop instead of one each. `call(fn, *args)` runs `fn(conn, *args)`
there with no transaction of its own. `close()` closes the connection on its thread,
then ends the thread; it is safe to call twice. sqlite3 errors propagate unchanged (the
store turns the database's own failures into `StoreUnavailable`).

`with reads_apart():` marks the reads of the code inside (and of the tasks it starts) as
an admin request's: the store sends their `fetch_all`/`fetch_one` to this thread, which
only long-poll answers share, instead of the read connection that the liveness sweep's,
the autoscaler's and the other loops' reads queue on (issue 16: a dashboard read must
not wait behind them). Reads only: never wrap a write in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")
# A context variable, not an argument: the counts and views an admin request reads
# through take the store, and tasks it gathers inherit the mark.
APART: ContextVar[bool] = ContextVar("reads_apart", default=False)


@contextlib.contextmanager
def reads_apart() -> Iterator[None]:
    token = APART.set(True)
    try:
        yield
    finally:
        APART.reset(token)


def rows_of(sql: str, params: Iterable[Any]) -> Callable[[sqlite3.Connection], list[Any]]:
    """A read function for `SqliteThread.run`: one statement's rows."""
    bound = tuple(params)
    return lambda conn: conn.execute(sql, bound).fetchall()


class SqliteThread:
    def __init__(self, pragmas: Iterable[str], query_only: bool = True) -> None:
        self._pragmas = (*pragmas, *(["PRAGMA query_only=ON"] if query_only else []))
        self._name = "store-read" if query_only else "store-write"
        self._pool: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # touched only on the pool's thread

    async def open(self, path: str) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=self._name)
        self._conn = await self._on_thread(self._connect, path)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self.call(_in_snapshot, fn)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return await self._on_thread(fn, self._conn, *args)

    async def close(self) -> None:
        pool, conn = self._pool, self._conn
        self._pool = self._conn = None
        if pool is None:
            return
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                await asyncio.get_running_loop().run_in_executor(pool, conn.close)
        await asyncio.to_thread(pool.shutdown, wait=True)

    async def _on_thread(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _connect(self, path: str) -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            for pragma in self._pragmas:
                conn.execute(pragma)
        except BaseException:
            conn.close()
            raise
        return conn


def _in_snapshot(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    conn.execute("BEGIN")
    try:
        return fn(conn)
    finally:
        if conn.in_transaction:  # SQLite ends it itself on an I/O error
            conn.execute("ROLLBACK")  # it only read
