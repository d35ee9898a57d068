"""Where the control plane keeps its state: SQLite's file, or a PostgreSQL database that
several replicas share (docs/production.md, PostgreSQL).

Contract: `DatabaseSettings` is a frozen, keyword-only dataclass that `Settings`
inherits (like BackupSettings: the settings module has no room left under the 400-line
rule). DATABASE_URL is a secret (it may hold a password): no message, log or repr shows it.
"""

from __future__ import annotations

from dataclasses import dataclass

from control.settings.rules import database_url
from shared.config import setting, text


@dataclass(frozen=True, kw_only=True)
class DatabaseSettings:
    database_path: str = setting(
        "DATABASE_PATH", "data/clawfleet.db", text, "SQLite database file."
    )
    database_url: str = setting(
        "DATABASE_URL",
        "",
        database_url,
        "Empty: SQLite at DATABASE_PATH (one control plane). postgresql://user:password@host:port/database: PostgreSQL instead, so that several replicas can share it (docs/production.md, PostgreSQL). DATABASE_PATH's directory still holds local files (the Cloudflare ranges, the origin TLS pair).",
        secret=True,
    )
