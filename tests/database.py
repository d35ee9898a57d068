"""A test's own connection to a control plane's database, whichever backend it runs on
(SQLite's file, or DATABASE_URL's PostgreSQL under --db=postgres): statements are
SQLite's text, translated for PostgreSQL as the store translates them."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any, Protocol

import psycopg

from control.db.postgres_conn import ReadConnection, configure, row_factory
from control.settings import Settings


class Cursor(Protocol):
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    def execute(self, sql: str, params: Any = ..., /) -> Cursor: ...


@contextlib.contextmanager
def connected(settings: Settings) -> Iterator[Connection]:
    """Each statement commits on PostgreSQL (autocommit); on SQLite all of them
    commit together when the block ends without an error."""
    if settings.database_url:
        conn = psycopg.connect(settings.database_url, autocommit=True, row_factory=row_factory)
        with contextlib.closing(conn):
            configure(conn)
            yield ReadConnection(conn)
        return
    with contextlib.closing(sqlite3.connect(settings.database_path, timeout=10)) as db, db:
        db.row_factory = sqlite3.Row
        yield db


def execute(settings: Settings, sql: str, *params: Any) -> list[dict[str, Any]]:
    """One statement, committed; its rows by column name (none for a write)."""
    with connected(settings) as conn:
        return [{k: row[k] for k in row.keys()} for row in conn.execute(sql, params).fetchall()]
