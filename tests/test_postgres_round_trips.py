"""Round trips to PostgreSQL (issue 16): a write holds what answers nothing and sends it
with the next statement whose answer it wants, or with COMMIT (control/db/postgres_conn.py
`WriteConnection`), and a read sends its BEGIN with its first query
(control/db/postgres_read.py). Counted on the wire: libpq's protocol trace of the
store's own connection, one ReadyForQuery per round trip."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiosqlite
import psycopg
import pytest
from psycopg.pq import Trace

from control.db.postgres import PostgresStore
from control.db.store import fetch_each

EVENT = "INSERT INTO events (at, kind, message) VALUES (?, ?, ?)"


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[PostgresStore]:
    opened = PostgresStore(postgres_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


class Wire:
    def __init__(self) -> None:
        self.lines: list[str] = []

    @property
    def round_trips(self) -> int:
        return sum(1 for line in self.lines if "\tReadyForQuery" in line)

    def sent(self) -> list[str]:
        """The statements sent, in order (the extended protocol's Parse, or a Query)."""
        return [
            line.split('"')[3] if "\tParse\t" in line else line.split('"')[1]
            for line in self.lines
            if line.startswith("F") and ("\tParse\t" in line or "\tQuery\t" in line)
        ]


@contextlib.contextmanager
def traced(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> Iterator[Wire]:
    wire = Wire()
    with tempfile.TemporaryFile("w+") as out:
        conn.pgconn.trace(out.fileno())
        conn.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS | Trace.REGRESS_MODE)
        try:
            yield wire
        finally:
            conn.pgconn.untrace()
            out.seek(0)
            wire.lines = out.read().splitlines()


def writer(store: PostgresStore) -> psycopg.AsyncConnection[Any]:
    assert store._writer is not None
    return store._writer


async def test_a_write_sends_its_changes_with_the_read_that_follows_them(
    store: PostgresStore,
) -> None:
    async def fn(conn: aiosqlite.Connection) -> int:
        await conn.execute(EVENT, (1, "a", "x"))
        await conn.execute(EVENT, (2, "a", "y"))
        async with conn.execute("SELECT COUNT(*) FROM events") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else -1

    with traced(writer(store)) as wire:
        seen = await store.write(fn)
    assert seen == 2  # the held inserts went first, in order
    assert wire.round_trips == 2  # BEGIN, lock, both inserts and the read; COMMIT
    assert [s.split(" ")[0] for s in wire.sent()] == [
        "BEGIN", "SELECT", "INSERT", "INSERT", "SELECT", "COMMIT",
    ]  # fmt: skip


async def test_a_write_of_changes_only_is_one_round_trip_with_its_commit(
    store: PostgresStore,
) -> None:
    async def fn(conn: aiosqlite.Connection) -> None:
        for i in range(5):
            await conn.execute(EVENT, (i, "a", "x"))

    with traced(writer(store)) as wire:
        await store.write(fn)
    assert wire.round_trips == 1
    row = await store.fetch_one("SELECT COUNT(*) AS n FROM events")
    assert row is not None and row["n"] == 5


async def test_a_held_statement_s_error_rolls_the_whole_write_back(store: PostgresStore) -> None:
    async def fn(conn: aiosqlite.Connection) -> str:
        await conn.execute(EVENT, (1, "a", "kept?"))
        await conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (1, 0)")
        return "returned"

    with pytest.raises(psycopg.errors.UniqueViolation):  # raised with COMMIT's round trip
        await store.write(fn)
    assert await store.fetch_all("SELECT * FROM events") == []
    await store.write(lambda conn: conn.execute(EVENT, (2, "b", "after")))  # usable again
    assert [r["message"] for r in await store.fetch_all("SELECT message FROM events")] == ["after"]


async def test_a_row_count_is_read_through_async_with_never_from_a_held_statement(
    store: PostgresStore,
) -> None:
    async def fn(conn: aiosqlite.Connection) -> int:
        await conn.execute(EVENT, (1, "a", "x"))
        held = await conn.execute("UPDATE events SET kind = 'b'")
        with pytest.raises(RuntimeError, match="held statement has no row count"):
            _ = held.rowcount
        async with conn.execute("UPDATE events SET kind = 'c' WHERE kind = 'b'") as cursor:
            return int(cursor.rowcount)

    assert await store.write(fn) == 1


async def test_independent_reads_in_a_write_share_one_round_trip(store: PostgresStore) -> None:
    await store.write(lambda conn: conn.execute(EVENT, (1, "a", "x")))

    async def fn(conn: aiosqlite.Connection) -> list[list[Any]]:
        await conn.execute(EVENT, (2, "b", "y"))  # held: goes with the reads
        found = await fetch_each(
            conn,
            [
                ("SELECT COUNT(*) FROM events", ()),
                ("SELECT kind FROM events WHERE at = ?", (2,)),
                ("SELECT kind FROM events WHERE at = ?", (3,)),
            ],
        )
        return [[tuple(row) for row in rows] for rows in found]

    with traced(writer(store)) as wire:
        found = await store.write(fn)
    assert found == [[(2,)], [("b",)], []]
    assert wire.round_trips == 2  # the reads with BEGIN, lock and insert; COMMIT


async def test_a_read_sends_its_begin_with_its_first_query(store: PostgresStore) -> None:
    await store.write(lambda conn: conn.execute(EVENT, (1, "a", "x")))
    await store.read(lambda conn: None)  # the read thread has connected
    reads = store._reads._conn
    assert reads is not None

    def two(conn: Any) -> tuple[Any, Any]:
        first = conn.execute("SELECT COUNT(*) FROM events").fetchone()
        level = conn.execute("SELECT current_setting('transaction_isolation')").fetchone()
        return tuple(first), tuple(level)

    with traced(reads) as wire:
        assert await store.read(two) == ((1,), ("repeatable read",))
    assert wire.round_trips == 3  # BEGIN and the first query, the second, ROLLBACK
    assert wire.sent()[0] == "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    assert reads.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
