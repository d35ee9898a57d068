"""One writer per table (docs/architecture.md): every INSERT, UPDATE and DELETE on a
table sits in that table's owner module, and every other module calls the owner.

Scanned on the source: each string constant in control/ (adjacent literals and
f-strings joined, as Python joins them) is searched for the statements that write.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTROL = ROOT / "control"

OWNERS: dict[str, str] = {
    "users": "control/users/records.py",
    "servers": "control/workers/servers.py",
    "bootstrap_tokens": "control/workers/tokens.py",
    "nonces": "control/workers/nonces.py",
    "subscriptions": "control/billing/subscriptions.py",
    "stripe_events": "control/billing/inbox.py",
    "events": "control/db/events.py",
    "dashboard_sessions": "control/api/sessions.py",
    "volumes": "control/volumes/records.py",
    "backup_jobs": "control/backup_jobs/records.py",
    "relocations": "control/volumes/relocations.py",
    "checkouts": "control/portal/checkouts.py",
    "portal_login_links": "control/portal/login_links.py",
    "portal_sessions": "control/portal/customer_sessions.py",
    "leases": "control/leadership/lease.py",
    # PostgreSQL: the servers each replica's writes touched, numbered (the room index).
    "clawfleet_room_log": "control/users/room_feed_pg.py",
    # The store records which migrations ran; the migrations create every table.
    "schema_migrations": "control/db/store.py",
    # Counts the database keeps by itself: only their triggers write them.
    "server_counts": "control/db/counts_schema.py",
    "user_counts": "control/db/counts_schema.py",
    "event_counts": "control/db/counts_schema.py",
    "volume_counts": "control/db/counts_schema.py",
}
# Only DDL and data migrations: they write every table once, at start-up.
EXEMPT = {"control/db/migrations.py"}

WRITE = re.compile(
    # "ON CONFLICT ... DO UPDATE SET" is part of its INSERT, not a statement of its own;
    # a trigger's "AFTER UPDATE OF <columns> ON <table>" names what it fires on.
    r"\b(?:INSERT\s+(?:OR\s+\w+\s+)?INTO|REPLACE\s+INTO|(?<!DO\s)UPDATE(?!\s+OF\s)"
    r"|DELETE\s+FROM)\s+(\w+)",
    re.IGNORECASE,
)


def _strings(tree: ast.AST) -> list[str]:
    """Every string constant but docstrings (prose), with an f-string's literal parts
    joined."""
    prose = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    found: list[str] = []
    for node in ast.walk(tree):
        if id(node) in prose:
            continue
        if isinstance(node, ast.JoinedStr):
            found.append(
                "".join(
                    v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else " "
                    for v in node.values
                )
            )
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append(node.value)
    return found


def writes(source: str) -> set[str]:
    """The tables a module's SQL writes to."""
    tables: set[str] = set()
    for text in _strings(ast.parse(source)):
        for match in WRITE.finditer(text):
            tables.add(match.group(1).lower())
    return tables


def _modules() -> list[Path]:
    return sorted(p for p in CONTROL.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_each_table_is_written_only_by_its_owner(path: Path) -> None:
    module = str(path.relative_to(ROOT))
    if module in EXEMPT:
        return
    for table in sorted(writes(path.read_text())):
        owner = OWNERS.get(table)
        assert owner is not None, f"{module} writes {table}, a table with no owner in OWNERS"
        assert owner == module, f"{module} writes {table}: only {owner} may; call it"


def test_every_owner_exists_and_writes_its_table() -> None:
    for table, owner in OWNERS.items():
        assert table in writes((ROOT / owner).read_text()), f"{owner} does not write {table}"


@pytest.mark.parametrize(
    ("sql", "tables"),
    [
        ("UPDATE servers SET generation = generation + 1 WHERE id = ?", {"servers"}),
        ("INSERT INTO nonces (key_id) VALUES (?) ON CONFLICT (key_id) DO NOTHING", {"nonces"}),
        (
            "INSERT INTO subscriptions (id) VALUES (?) ON CONFLICT (id) DO UPDATE SET x = 1",
            {"subscriptions"},
        ),
        ("DELETE FROM users WHERE id = ?", {"users"}),
        ("insert or replace into events (at) values (?)", {"events"}),
        ("SELECT * FROM users WHERE updated_at > ?", set()),
        ("SELECT id FROM servers WHERE status = 'deleted'", set()),
        (
            "CREATE TRIGGER t AFTER UPDATE OF state ON users BEGIN "
            "INSERT INTO c (n) VALUES (1) ON CONFLICT (k) DO UPDATE SET n = n + 1; END",
            {"c"},
        ),
    ],
)
def test_the_scan_sees_writes_and_only_writes(sql: str, tables: set[str]) -> None:
    assert writes(f"X = {sql!r}\n") == tables


def test_the_scan_skips_docstrings() -> None:
    source = '"""Every UPDATE of a row."""\ndef f():\n    """INSERT INTO users, said."""\n'
    assert writes(source) == set()


def test_the_scan_joins_literals_and_f_strings() -> None:
    source = 'def f(extra):\n    return (f"UPDATE servers SET a = 1{extra} " "WHERE id = ?")\n'
    assert writes(source) == {"servers"}
