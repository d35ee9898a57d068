"""psycopg connections dressed as the SQLite ones the control plane's SQL functions take.

Contract:
- `WriteConnection` wraps an async psycopg connection and offers what the write
  functions use of aiosqlite's: `await conn.execute(sql, params)` and `async with
  conn.execute(...) as cur`, `executemany`, `execute_fetchall`, and cursors with
  `fetchone`/`fetchall`/`rowcount` (a statement that returns no rows fetches None and
  []). `ReadConnection` wraps a sync one as `sqlite3.Connection` does for `Store.read`
  (`conn.execute(sql, params).fetchone()`, `for row in conn.execute(...)`). Every
  statement is SQLite's text, sent as control/db/dialect.py translates it, always with
  a parameter sequence; `native` sends PostgreSQL's own.
- Round trips (issue 16): a `WriteConnection` that `holds` keeps a statement awaited
  plainly that answers nothing (INSERT, UPDATE, DELETE without RETURNING; SAVEPOINT)
  and sends it in one pipeline with the next statement whose answer is wanted (or
  COMMIT); its error is raised there. Such a statement's cursor (`Held`) has no row
  count: `async with conn.execute(...)` sends at once and has one. `fetch_each` sends
  independent reads at once. A `ReadConnection` given `begin` sends it with its first
  query.
- Rows (`Row`) are indexed by position and by column name, iterate over their
  values, and have `keys()`, as `sqlite3.Row`.
- Values come back as SQLite would give them: NUMERIC (what SUM over BIGINT makes) as
  an int when whole, else a float; Python's bool goes in as 0 or 1, as SQLite stores it.
- `storage_failure(exc)`: the StoreUnavailable for a failure of the database itself
  (connection lost, server shutting down, out of disk or memory, I/O, a read-only
  transaction, corruption), else None: a constraint or an error in the SQL stays what
  it is.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, overload

import psycopg
from psycopg.adapt import Buffer, Dumper, Loader
from psycopg.pq import Format
from psycopg.rows import RowMaker

from control.db import dialect
from control.db.store import StoreUnavailable

# SQLSTATE classes that say the database cannot be used right now: 08 connection,
# 53 insufficient resources (disk full, out of memory), 57 operator intervention
# (shutdown), 58 system error (I/O), XX internal error (corruption); and 25006, a
# write in a read-only transaction (a standby, or default_transaction_read_only).
_STORAGE_CLASSES = ("08", "53", "57", "58", "XX")
_READ_ONLY = "25006"


def storage_failure(exc: BaseException) -> StoreUnavailable | None:
    if not isinstance(exc, psycopg.Error):
        return None
    state = exc.sqlstate
    if state is None and not isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return None
    if state is not None and state != _READ_ONLY and not state.startswith(_STORAGE_CLASSES):
        return None
    return StoreUnavailable(f"the database cannot be used: {exc}")


@contextlib.contextmanager
def storage_failures() -> Iterator[None]:
    """A failure of the database itself, raised in the block, as `StoreUnavailable`."""
    try:
        yield
    except psycopg.Error as exc:
        failure = storage_failure(exc)
        if failure is None:
            raise
        raise failure from exc


class Row(Sequence[Any]):
    __slots__ = ("_columns", "_names", "_values")

    def __init__(self, columns: tuple[str, ...], names: dict[str, int], values: Sequence[Any]):
        self._columns = columns
        self._names = names
        self._values = tuple(values)

    @overload
    def __getitem__(self, key: int | str) -> Any: ...
    @overload
    def __getitem__(self, key: slice) -> tuple[Any, ...]: ...
    def __getitem__(self, key: int | str | slice) -> Any:
        if isinstance(key, str):
            return self._values[self._names[key]]
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def keys(self) -> list[str]:
        return list(self._columns)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Row):
            return self._values == other._values and self._columns == other._columns
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._columns, self._values, strict=True))!r})"


def row_factory(cursor: psycopg.Cursor[Any] | psycopg.AsyncCursor[Any]) -> RowMaker[Row]:
    columns = tuple(column.name for column in cursor.description or ())
    names: dict[str, int] = {}
    for i, name in enumerate(columns):
        names.setdefault(name, i)  # as sqlite3.Row: a repeated name finds the first
    return lambda values: Row(columns, names, values)


class _NumericLoader(Loader):
    def load(self, data: Buffer) -> int | float:
        number = Decimal(bytes(data).decode())
        return int(number) if number == number.to_integral_value() else float(number)


class _BoolDumper(Dumper):
    format = Format.TEXT
    oid = psycopg.adapters.types["int8"].oid

    def dump(self, obj: Any) -> Buffer:
        return b"1" if obj else b"0"


def configure(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    conn.adapters.register_loader("numeric", _NumericLoader)
    conn.adapters.register_dumper(bool, _BoolDumper)


class WriteCursor:
    def __init__(self, cursor: psycopg.AsyncCursor[Row]) -> None:
        self.raw = self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    async def fetchone(self) -> Row | None:
        return await self._cursor.fetchone() if self._cursor.description else None

    async def fetchall(self) -> list[Row]:
        return await self._cursor.fetchall() if self._cursor.description else []

    async def close(self) -> None:
        await self._cursor.close()


@dataclass(frozen=True)
class Done:
    rowcount: int


class _Pending:
    """What `WriteConnection.execute` returns: awaitable, and an async context manager
    that closes its cursor, as aiosqlite's. Awaited plainly, a statement that answers
    nothing is held (see `WriteConnection`); `async with` always sends it."""

    def __init__(self, conn: WriteConnection, sql: str, params: Iterable[Any]):
        self._conn, self._sql, self._params = conn, sql, tuple(params)
        self._cursor: WriteCursor | None = None

    async def _run(self) -> WriteCursor:
        self._cursor = await self._conn.send(self._sql, self._params)
        return self._cursor

    async def _run_or_hold(self) -> WriteCursor | Held:
        if self._conn.holds and _answers_nothing(self._sql):
            self._conn.hold(*dialect.bind(self._sql, self._params))
            return HELD
        return await self._run()

    def __await__(self) -> Any:
        return self._run_or_hold().__await__()

    async def __aenter__(self) -> WriteCursor:
        return await self._run()

    async def __aexit__(self, *exc: object) -> None:
        if self._cursor is not None:
            await self._cursor.close()


class Held:
    """The cursor of a held statement: it answers nothing yet."""

    @property
    def rowcount(self) -> int:
        raise RuntimeError("a held statement has no row count yet: run it with `async with`")

    async def fetchone(self) -> None:
        return None

    async def fetchall(self) -> list[Row]:
        return []

    async def close(self) -> None:
        return None


HELD = Held()
_CHANGES = re.compile(r"\s*(INSERT|UPDATE|DELETE|SAVEPOINT|RELEASE)\b", re.IGNORECASE)
_RETURNING = re.compile(r"\bRETURNING\b", re.IGNORECASE)


@functools.lru_cache(maxsize=1024)
def _answers_nothing(sql: str) -> bool:
    """A statement whose answer nobody can want but for its row count (a WITH may end
    in a SELECT: it is sent at once)."""
    return _CHANGES.match(sql) is not None and _RETURNING.search(sql) is None


class WriteConnection:
    """With `holds` (the store's write transactions), a statement awaited plainly that
    answers nothing (INSERT, UPDATE or DELETE without RETURNING, SAVEPOINT) is held
    and sent with the next statement whose answer is wanted, or with COMMIT, in one
    pipeline: one round trip for the lot, under the write lock every replica waits
    for (issue 16). An error in a held statement is raised there, and aborts the
    transaction as it would have at once. A row count is read through `async with`."""

    def __init__(self, conn: psycopg.AsyncConnection[Row], holds: bool = False) -> None:
        self.raw = conn
        self.holds = holds
        self._held: list[tuple[str, Any]] = []

    def hold(self, statement: str, params: Any = None) -> None:
        """Queues PostgreSQL's own text to go with the next statement sent."""
        self._held.append((statement, params))

    def drop_held(self) -> None:
        self._held.clear()

    @contextlib.asynccontextmanager
    async def _sending(self, pipeline: bool = False) -> AsyncIterator[None]:
        """What is held, then what the block sends, in one round trip."""
        if not self._held and not pipeline:
            yield
            return
        held, self._held = self._held, []
        async with self.raw.pipeline():
            for statement, params in held:
                await self.raw.execute(statement, params)
            yield

    async def send(self, sql: str, params: Iterable[Any]) -> WriteCursor:
        return await self.native(*dialect.bind(sql, params))

    async def native(self, statement: str, params: Any = None) -> WriteCursor:
        """PostgreSQL's own text, sent after what is held."""
        cursor = self.raw.cursor()
        async with self._sending():
            await cursor.execute(statement, params)
        return WriteCursor(cursor)

    def execute(self, sql: str, params: Iterable[Any] = ()) -> _Pending:
        return _Pending(self, sql, params)

    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> Done:
        """As aiosqlite's cursor after it: `rowcount` is the rows' sum."""
        async with self.raw.cursor() as cursor:
            bound = [dialect.bind(sql, row) for row in rows]
            async with self._sending():  # psycopg's executemany rides the pipeline
                await cursor.executemany(dialect.statement(sql), [params for _, params in bound])
            return Done(cursor.rowcount)  # read before the close, which resets it

    async def fetch_each(self, queries: Sequence[tuple[str, Iterable[Any]]]) -> list[list[Row]]:
        """Each query's rows, all sent at once (with what is held)."""
        cursors = [WriteCursor(self.raw.cursor()) for _ in queries]
        async with self._sending(pipeline=True):
            for cursor, (sql, params) in zip(cursors, queries, strict=True):
                await cursor.raw.execute(*dialect.bind(sql, params))
        rows = [await cursor.fetchall() for cursor in cursors]
        for cursor in cursors:
            await cursor.close()
        return rows

    async def execute_fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        async with self.execute(sql, params) as cursor:
            return await cursor.fetchall()


class ReadCursor:
    def __init__(self, cursor: psycopg.Cursor[Row]) -> None:
        self._cursor = cursor

    def fetchone(self) -> Row | None:
        return self._cursor.fetchone() if self._cursor.description else None

    def fetchall(self) -> list[Row]:
        return self._cursor.fetchall() if self._cursor.description else []

    def __iter__(self) -> Iterator[Row]:
        return iter(self.fetchall())


class ReadConnection:
    """With `begin`, that statement goes with the first query, in one round trip."""

    def __init__(self, conn: psycopg.Connection[Row], begin: str | None = None) -> None:
        self.raw = conn
        self._begin = begin

    def execute(self, sql: str, params: Iterable[Any] = ()) -> ReadCursor:
        if self._begin is None:
            return ReadCursor(self.raw.execute(*dialect.bind(sql, params)))
        begin, self._begin = self._begin, None
        with self.raw.pipeline():
            self.raw.execute(begin)
            cursor = self.raw.execute(*dialect.bind(sql, params))
        return ReadCursor(cursor)
