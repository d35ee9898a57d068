"""control/db/dialect.py: SQLite's statements as PostgreSQL text, by a parameter table,
then the statements the control plane's own modules hold that sqlglot translates
differently, run on a real PostgreSQL with their results compared to SQLite's."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest

from control.db import dialect
from control.db.postgres import PostgresStore
from control.db.store import Store


@pytest.mark.parametrize(
    ("sqlite", "postgres"),
    [
        ("SELECT a FROM t WHERE b = ?", "SELECT a FROM t WHERE b = %s"),
        (
            "INSERT OR IGNORE INTO nonces (k, n) VALUES (?, ?)",
            "INSERT INTO nonces (k, n) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        ),
        (
            "SELECT id FROM c WHERE c.email = ? COLLATE NOCASE",
            "SELECT id FROM c WHERE LOWER(c.email) = LOWER(%s)",
        ),
        # NULL when an argument is, as SQLite's (GREATEST and LEAST skip NULLs).
        ("SELECT SUM(MAX(0, m - ?)) FROM s", "SELECT SUM(CLAWFLEET_GREATEST(0, m - %s)) FROM s"),
        ("SELECT MIN(a, b), MAX(c) FROM s", "SELECT CLAWFLEET_LEAST(a, b), MAX(c) FROM s"),
        ("SELECT IFNULL(a, '') FROM s", "SELECT COALESCE(a, '') FROM s"),
        ("SELECT a FROM s WHERE b IS NOT ?", "SELECT a FROM s WHERE b IS DISTINCT FROM %s"),
        # A literal % is doubled: psycopg would take it for a placeholder.
        ("SELECT a FROM s WHERE b LIKE '%x'", "SELECT a FROM s WHERE b LIKE '%%x'"),
        # SQLite sorts NULL first, PostgreSQL last: the order is SQLite's.
        ("SELECT a FROM s ORDER BY b", "SELECT a FROM s ORDER BY b NULLS FIRST"),
        # SQLite's numbered parameters: one value in several places (dialect.bind names them).
        (
            "SELECT a FROM t WHERE x < ?1 AND y = ?1",
            "SELECT a FROM t WHERE x < %(p1)s AND y = %(p1)s",
        ),
        # PostgreSQL 15 wants a name for a subquery in FROM.
        (
            "SELECT s, COUNT(*) FROM (SELECT s FROM a UNION ALL SELECT s FROM b) GROUP BY s",
            "SELECT s, COUNT(*) FROM (SELECT s FROM a UNION ALL SELECT s FROM b) AS _sub0 GROUP BY s",
        ),
        (
            "SELECT x.s FROM (SELECT s FROM a) x JOIN (SELECT s FROM b) ON 1 = 1",
            "SELECT x.s FROM (SELECT s FROM a) AS x JOIN (SELECT s FROM b) AS _sub1 ON 1 = 1",
        ),
        # SQLite's truth values are numbers: summed, and a parameter as a condition.
        ("SELECT SUM(a <= ?) FROM s", "SELECT SUM(CAST(a <= %s AS INT)) FROM s"),
        (
            "UPDATE s SET a = CASE WHEN ? THEN NULL ELSE a END",
            "UPDATE s SET a = CASE WHEN %s <> 0 THEN NULL ELSE a END",
        ),
        ("SELECT a FROM s WHERE ? IS NULL", "SELECT a FROM s WHERE CAST(%s AS TEXT) IS NULL"),
        (
            "SELECT a FROM s ORDER BY a LIMIT -1 OFFSET ?",
            "SELECT a FROM s ORDER BY a NULLS FIRST LIMIT NULL OFFSET %s",
        ),
        (
            "SELECT a FROM s WHERE b IS NULL AND ? OR NOT ?",
            "SELECT a FROM s WHERE b IS NULL AND %s <> 0 OR NOT %s <> 0",
        ),
        (
            "INSERT INTO k (a, n) VALUES (?, 1) ON CONFLICT (a) DO UPDATE SET n = n + excluded.n",
            "INSERT INTO k (a, n) VALUES (%s, 1) ON CONFLICT(a) DO UPDATE SET n = n + excluded.n",
        ),
        # A column NOT NULL in every table of the schema keeps PostgreSQL's NULL order, so
        # its index serves a page; not when an outer join or a subquery may give NULLs.
        (
            "SELECT id FROM servers WHERE id > ? ORDER BY id LIMIT ?",
            "SELECT id FROM servers WHERE id > %s ORDER BY id LIMIT %s",
        ),
        (
            "SELECT id FROM users ORDER BY created_at DESC",
            "SELECT id FROM users ORDER BY created_at DESC",
        ),
        (
            "SELECT u.id FROM users u LEFT JOIN volumes v ON v.user_id = u.id ORDER BY v.created_at",
            "SELECT u.id FROM users AS u LEFT JOIN volumes AS v ON v.user_id = u.id "
            "ORDER BY v.created_at NULLS FIRST",
        ),
        (
            "SELECT id FROM (SELECT NULL AS id) ORDER BY id",
            "SELECT id FROM (SELECT NULL AS id) AS _sub0 ORDER BY id NULLS FIRST",
        ),
        (
            "SELECT server_id FROM users ORDER BY server_id",
            "SELECT server_id FROM users ORDER BY server_id NULLS FIRST",
        ),
        # Lists of placeholders, kept in their order and lengths.
        (
            "SELECT a FROM t WHERE id IN (?, ?, ?) AND b IN (?) AND c IN (SELECT d FROM e WHERE f IN (?,?))",
            "SELECT a FROM t WHERE id IN (%s, %s, %s) AND b IN (%s) "
            "AND c IN (SELECT d FROM e WHERE f IN (%s, %s))",
        ),
        # The same in both (sqlglot would warn in the log that it cannot parse them).
        ("SAVEPOINT nonces", "SAVEPOINT nonces"),
        ("ROLLBACK TO SAVEPOINT nonces", "ROLLBACK TO SAVEPOINT nonces"),
        ("RELEASE SAVEPOINT nonces", "RELEASE SAVEPOINT nonces"),
    ],
)
def test_statements(sqlite: str, postgres: str) -> None:
    assert dialect.statement(sqlite) == postgres


@pytest.mark.parametrize(
    ("ddl", "postgres"),
    [
        ("CREATE TABLE t (a INTEGER, b REAL)", "CREATE TABLE t (a BIGINT, b DOUBLE PRECISION)"),
        (
            "CREATE TABLE e (id INTEGER PRIMARY KEY AUTOINCREMENT)",
            "CREATE TABLE e (id BIGINT GENERATED BY DEFAULT AS IDENTITY NOT NULL PRIMARY KEY)",
        ),
        ("CREATE INDEX ce ON c(email COLLATE NOCASE)", "CREATE INDEX ce ON c(LOWER(email))"),
        ("CREATE INDEX i ON s(a, b)", "CREATE INDEX i ON s(a, b)"),
    ],
)
def test_scripts(ddl: str, postgres: str) -> None:
    assert dialect.script(ddl) == [postgres]


def test_bind_names_numbered_parameters() -> None:
    assert dialect.bind("SELECT ?2 + ?1", (1, 2)) == ("SELECT %(p2)s + %(p1)s", {"p1": 1, "p2": 2})
    assert dialect.bind("SELECT ? + ?", [1, 2]) == ("SELECT %s + %s", (1, 2))


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT OR REPLACE INTO t (a) VALUES (?)",
        "SELECT 1; SELECT 2",
        "SELECT FROM WHERE (",
        "SELECT a FROM t WHERE x = ?1 AND y = ?",
    ],
)
def test_what_cannot_be_translated_is_refused(sql: str) -> None:
    with pytest.raises(dialect.UnsupportedStatement):
        dialect.statement(sql)


ROWS = [
    ("s1", "a", "active", 4096, None, "A@Example.com"),
    ("s2", "b", "active", None, "cx22", "b@example.com"),
    ("s3", "c", "dead", 1024, "cx22", "c%@example.com"),
]
# (statement, parameters): each must give the same rows on both backends.
QUERIES: list[tuple[str, tuple[Any, ...]]] = [
    ("SELECT id FROM servers WHERE hostname = ? COLLATE NOCASE", ("a@example.COM",)),
    ("SELECT id, MAX(0, memory_mb - ?) AS free FROM servers ORDER BY id", (2048,)),
    ("SELECT id FROM servers ORDER BY memory_mb, id", ()),
    ("SELECT id FROM servers WHERE server_type IS NOT ? ORDER BY id", ("cx22",)),
    ("SELECT id FROM servers WHERE hostname LIKE 'c%' ORDER BY id", ()),
    ("SELECT IFNULL(server_type, '-') AS t, COUNT(*) AS n FROM servers GROUP BY 1 ORDER BY 1", ()),
    ("SELECT SUM(memory_mb) AS total, MIN(memory_mb) AS least FROM servers", ()),
    ("SELECT id, MIN(memory_mb, 2000.5) AS m FROM servers ORDER BY id", ()),
    # Two arguments and three take different functions on PostgreSQL (postgres_schema.py).
    ("SELECT id, MAX(memory_mb, 1000, ?) AS m FROM servers ORDER BY id", (3000,)),
    ("SELECT MAX(1, NULL) AS a, MIN(NULL, 2) AS b, MIN(2, 1.5) AS c, MAX(?, 7) AS d", (8,)),
    ("SELECT COUNT(*) AS n FROM (SELECT id FROM servers WHERE memory_mb > ?)", (2000,)),
    ("SELECT id FROM servers WHERE memory_mb > ?2 OR name = ?1 ORDER BY id", ("c", 2000)),
    ("SELECT COALESCE(SUM(memory_mb <= ?), 0) AS n FROM servers", (2048,)),
    ("SELECT MAX(name = ?) AS a, MIN(name = ?) AS b FROM servers", ("a", "a")),
    ("SELECT id FROM servers ORDER BY id LIMIT -1 OFFSET ?", (1,)),
    ("SELECT id, CASE WHEN ? THEN 'y' ELSE 'n' END AS c FROM servers ORDER BY id", (True,)),
    ("SELECT id, CASE WHEN ? THEN 'y' ELSE 'n' END AS c FROM servers ORDER BY id", (False,)),
    ("SELECT id FROM servers WHERE memory_mb > 0 AND ? ORDER BY id", (True,)),
    ("SELECT id FROM servers WHERE (? IS NULL OR name = ?) ORDER BY id", (None, "a")),
    ("SELECT id FROM servers WHERE (? IS NULL OR name = ?) ORDER BY id", ("a", "a")),
    ("SELECT id FROM servers WHERE NOT ? OR memory_mb > 2000 ORDER BY id", (True,)),
    ("SELECT id FROM servers WHERE id IN (?, ?) OR name IN (?) ORDER BY id", ("s1", "s9", "b")),
]
INSERT = (
    "INSERT OR IGNORE INTO servers (id, name, status, origin, memory_mb, server_type, "
    "hostname, created_at, status_changed_at) VALUES (?, ?, ?, 'join', ?, ?, ?, 0, 0)"
)


async def test_translated_statements_answer_as_sqlite_does(
    tmp_path: Path, postgres_url: str
) -> None:
    answers: list[list[list[tuple[Any, ...]]]] = []
    for store in (Store(str(tmp_path / "db.sqlite")), PostgresStore(postgres_url)):
        await store.open()
        try:
            for _ in range(2):  # the second time, every INSERT is ignored
                await store.write(lambda c: c.executemany(INSERT, ROWS))
            answers.append(
                [[tuple(r) for r in await store.fetch_all(sql, args)] for sql, args in QUERIES]
            )
        finally:
            await store.close()
    lite, pg = answers
    assert pg == lite
    assert lite[0] == [("s1",)]  # the case-blind match found its row


def test_a_statement_runs_through_psycopg_as_translated(postgres_url: str) -> None:
    with contextlib.closing(psycopg.connect(postgres_url)) as db:
        row = db.execute(dialect.statement("SELECT 'a%' || ?"), ("b",)).fetchone()
    with contextlib.closing(sqlite3.connect(":memory:")) as lite:
        assert row == lite.execute("SELECT 'a%' || ?", ("b",)).fetchone() == ("a%b",)


def test_a_savepoint_passes_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    assert dialect.statement("SAVEPOINT quiet") == "SAVEPOINT quiet"
    assert [r.getMessage() for r in caplog.records] == []


async def test_a_page_of_servers_walks_the_index(postgres_url: str) -> None:
    """No sort of the whole table for a page (admin pages at 10k servers)."""
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        rows = [(f"s{i:05}", f"n{i}", "active", 1024, None, f"h{i}") for i in range(3000)]
        await store.write(lambda c: c.executemany(INSERT, rows))
        await store.write(lambda c: c.execute("ANALYZE servers"))
        sql = dialect.statement("SELECT id FROM servers WHERE id > ? ORDER BY id LIMIT ?")
        plan = await store.read(
            lambda c: [r[0] for r in c.raw.execute("EXPLAIN " + sql, ("s00100", 101))]
        )
    finally:
        await store.close()
    assert not any("Sort" in line for line in plan), plan
    assert any("Index" in line for line in plan), plan


def test_lists_of_any_length_are_translated_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch's ids: each new length was a parse, and its trees garbage."""
    parsed = []
    parse = dialect._parse
    monkeypatch.setattr(dialect, "_parse", lambda sql: parsed.append(sql) or parse(sql))
    for n in range(1, 40):
        marks = ", ".join(["?"] * n)
        sql = f"SELECT id FROM lengths WHERE id IN ({marks}) AND k = ?"
        assert dialect.statement(sql).count("%s") == n + 1
    assert len(parsed) == 1
