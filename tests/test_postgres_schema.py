"""The schema on PostgreSQL (control/db/postgres_schema.py) is SQLite's: the same tables
with the same columns, types that hold what SQLite's hold, and counts kept by PL/pgSQL
triggers that equal a fresh count after random writes of every kind and after the
migration's backfill (the fresh counts and the random writes are tests/test_fleet_counts.py's,
made in Python, so a wrong trigger cannot agree with itself)."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from control.db import dialect
from control.db import postgres_schema as schema
from control.db.migrations import MIGRATIONS
from control.db.postgres import PostgresStore
from control.db.store import Store
from tests.test_fleet_counts import COUNTS_VERSION, fresh, kept, random_write

# The stores' own bookkeeping, not the schema: SQLite's AUTOINCREMENT table.
OWN = {"sqlite_sequence"}


class Translated:
    """A sync psycopg connection that takes SQLite's statements (as sqlite3's does)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Iterable[Any] = ()) -> psycopg.Cursor[Any]:
        return self.conn.execute(dialect.statement(sql), tuple(params))


@contextlib.contextmanager
def connected(url: str) -> Iterator[Translated]:
    with contextlib.closing(psycopg.connect(url, autocommit=True)) as conn:
        # The random writes pick rows with SQL's random(): seeded, every run is the same.
        conn.execute("SELECT setseed(0.25)")
        yield Translated(conn)


async def open_and_close(url: str) -> None:
    store = PostgresStore(url)
    await store.open()
    await store.close()


def sqlite_columns(path: str) -> dict[str, dict[str, str]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {
            t: {c[1]: c[2].upper() for c in db.execute(f"PRAGMA table_info({t})")}
            for t in tables
            if t not in OWN
        }


def postgres_columns(url: str) -> dict[str, dict[str, str]]:
    with contextlib.closing(psycopg.connect(url)) as db:
        rows = db.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public'"
        ).fetchall()
    found: dict[str, dict[str, str]] = {}
    for table, column, kind in rows:
        found.setdefault(table, {})[column] = kind
    return found


# What each SQLite type must be on PostgreSQL: 64-bit integers, 8-byte floats.
TYPES = {"INTEGER": "bigint", "REAL": "double precision", "TEXT": "text"}


async def test_the_same_tables_and_columns_on_both_backends(
    tmp_path: Path, postgres_url: str
) -> None:
    path = str(tmp_path / "db.sqlite")
    store = Store(path)
    await store.open()
    await store.close()
    await open_and_close(postgres_url)
    lite, pg = sqlite_columns(path), postgres_columns(postgres_url)
    assert sorted(pg) == sorted(lite)
    for table, columns in lite.items():
        assert list(sorted(pg[table])) == list(sorted(columns)), table
        wanted = {name: TYPES[kind] for name, kind in columns.items()}
        assert pg[table] == wanted, table


def test_every_migration_has_its_postgresql_twin() -> None:
    for version in range(1, len(MIGRATIONS) + 1):
        statements = schema.migration(version)
        assert statements or not MIGRATIONS[version - 1].strip(), version
        assert all("?" not in s for s in statements), version


@pytest.mark.parametrize("seed", [1, 2])
async def test_counts_follow_random_writes_of_every_kind(postgres_url: str, seed: int) -> None:
    await open_and_close(postgres_url)
    rng = random.Random(seed)
    seen = []
    with connected(postgres_url) as db:
        for i in range(300):
            random_write(db, rng, i)  # type: ignore[arg-type]
            if i % 50 == 49:
                seen.append(fresh(db))  # type: ignore[arg-type]
                assert kept(db) == seen[-1], f"after write {i}"  # type: ignore[arg-type]
    for table in ("servers", "users", "events", "volumes"):
        assert any(c[table] for c in seen), f"{table} never had a row"


def migrated_to(url: str, version: int) -> None:
    """A database as a build with `version` migrations left it."""
    with contextlib.closing(psycopg.connect(url, autocommit=True)) as db:
        for statement in schema.STORE_SETUP:
            db.execute(statement)
        for n in range(1, version + 1):
            with db.transaction():
                for statement in schema.migration(n):
                    db.execute(statement, ())
                db.execute("INSERT INTO schema_migrations VALUES (%s, %s)", (n, time.time()))


async def test_the_migration_counts_the_rows_already_there(postgres_url: str) -> None:
    migrated_to(postgres_url, COUNTS_VERSION - 1)
    rng = random.Random(9)
    with connected(postgres_url) as db:
        for i in range(200):
            random_write(db, rng, i)  # type: ignore[arg-type]
        before = fresh(db)  # type: ignore[arg-type]
    await open_and_close(postgres_url)
    with connected(postgres_url) as db:
        assert kept(db) == before == fresh(db)  # type: ignore[arg-type]
    assert before["users"] and before["volumes"] and before["events"]
    assert sum(errors for _, errors in before["servers"].values()) > 0  # reports were counted
