"""A SQLite write transaction run whole on the writer's thread: one hop off the loop.

Contract:
- `transaction(conn, fn, hooks)` runs on the thread that owns `conn` (a plain
  `sqlite3.Connection`): BEGIN IMMEDIATE, `fn(shim)`, each commit hook's `hook(shim)`,
  COMMIT; any exception rolls back and propagates. It returns `fn`'s result and what
  the hooks asked to run after COMMIT (the store runs those on the loop).
- `fn` and the hooks are the store's ordinary write functions, written against
  aiosqlite's API: `ThreadConnection` offers what they use of it (`await
  conn.execute(...)`, `async with conn.execute(...) as cur`, `executemany`,
  `execute_fetchall`, `create_function`, cursors with `fetchone`/`fetchall`/
  `rowcount`), each awaitable finishing at once. So their coroutine never
  suspends and is driven to its end here, with no event loop: a write function that
  awaits anything else (a sleep, a lock, a future of the loop) raises
  `SuspendedWrite`, and its transaction rolls back.
- Why (issue 16): through aiosqlite every statement was its own hop to the thread and
  back, each a wake-up of the loop: a heartbeat batch was about ten, a new user's
  placement more, all while holding the write lock every other write waits for.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from typing import Any, TypeVar, cast

from control.errors import ClawfleetError

T = TypeVar("T")


class SuspendedWrite(ClawfleetError):
    """A write function awaited something other than its connection: a bug of ours."""

    code = "suspended_write"


def finish(awaitable: Awaitable[T]) -> T:
    """The value of an awaitable that completes without suspending (see the contract)."""
    steps = awaitable.__await__()
    try:
        steps.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    close = getattr(steps, "close", None)
    if close is not None:
        close()
    raise SuspendedWrite(
        "a write function awaited something other than its connection; a write runs on "
        "the database's thread and may only await the connection it is given"
    )


def transaction(
    conn: sqlite3.Connection,
    fn: Callable[[Any], Awaitable[T]],
    hooks: Sequence[Callable[[Any], Awaitable[Callable[[], None] | None]]],
) -> tuple[T, list[Callable[[], None]]]:
    shim = ThreadConnection(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = finish(fn(shim))
        after = [then for hook in hooks if (then := finish(hook(shim))) is not None]
        conn.execute("COMMIT")
    except BaseException:
        # SQLite ends the transaction itself on a full disk, a read-only file or an
        # I/O error; a ROLLBACK then would fail and hide the error that matters.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result, after


class ThreadCursor:
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()


class _Statement:
    """What `execute` returns: awaited, or entered with `async with` (as aiosqlite's)."""

    def __init__(self, conn: sqlite3.Connection, sql: str, params: Iterable[Any]) -> None:
        self._conn, self._sql, self._params = conn, sql, params

    def _run(self) -> ThreadCursor:
        return ThreadCursor(self._conn.execute(self._sql, tuple(self._params)))

    def __await__(self) -> Generator[Any, None, ThreadCursor]:
        return self._run()
        yield  # a generator that never suspends

    async def __aenter__(self) -> ThreadCursor:
        self._cursor = self._run()
        return self._cursor

    async def __aexit__(self, *exc: object) -> None:
        await self._cursor.close()


class ThreadConnection:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def execute(self, sql: str, params: Iterable[Any] = ()) -> _Statement:
        return _Statement(self._conn, sql, params)

    async def execute_fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        return self._conn.execute(sql, tuple(params)).fetchall()

    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> ThreadCursor:
        return ThreadCursor(self._conn.executemany(sql, [tuple(row) for row in rows]))

    async def create_function(
        self, name: str, narg: int, func: Callable[..., Any], deterministic: bool = False
    ) -> None:
        self._conn.create_function(name, narg, func, deterministic=deterministic)
