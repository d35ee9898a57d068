"""Returning customers' one-time sign-in links (docs/portal.md): the only writer of the
`portal_login_links` table.

Contract:
- `normal_email(text)` is the one form of an address the portal compares, counts and
  stores: trimmed and lower-cased, or None when it is no address (`shared.names`).
- `issue(conn, email, now)` returns a new link token (`secrets.token_urlsafe(32)`,
  in the mailed link's fragment only); the table keeps its hex SHA-256, never the
  token, so a copy of the database signs nobody in. A new link replaces the address's
  earlier ones: only the latest works. Expired rows are deleted on every issue.
- `redeem(conn, token, now)` returns the address a live link was sent to and marks it
  used in the caller's transaction, so a link works once even when two tabs race;
  unknown, used and expired (`LINK_SECONDS` after issue) links give None, alike.
  Redeeming deletes the address's other links.
- Nothing here logs a token or an address.
"""

from __future__ import annotations

import hashlib
import secrets

import aiosqlite

from control.db.store import fetch_one
from shared.names import email_ok

LINK_SECONDS = 15 * 60
LINK_MINUTES = LINK_SECONDS // 60


def normal_email(text: str) -> str | None:
    email = text.strip().lower()
    return email if email_ok(email) else None


def token_hash(token: str) -> str:
    # Tokens come from the caller: a lone surrogate must not raise.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


async def issue(conn: aiosqlite.Connection, email: str, now: float) -> str:
    token = secrets.token_urlsafe(32)
    await conn.execute(
        "DELETE FROM portal_login_links WHERE email = ? OR expires_at <= ?", (email, now)
    )
    await conn.execute(
        "INSERT INTO portal_login_links (token_hash, email, created_at, expires_at) "
        "VALUES (?, ?, ?, ?)",
        (token_hash(token), email, now, now + LINK_SECONDS),
    )
    return token


async def redeem(conn: aiosqlite.Connection, token: str, now: float) -> str | None:
    key = token_hash(token)
    row = await fetch_one(
        conn,
        "SELECT email, expires_at, used_at FROM portal_login_links WHERE token_hash = ?",
        (key,),
    )
    if row is None or row["used_at"] is not None or float(row["expires_at"]) <= now:
        return None
    email = str(row["email"])
    await conn.execute("UPDATE portal_login_links SET used_at = ? WHERE token_hash = ?", (now, key))
    await conn.execute(
        "DELETE FROM portal_login_links WHERE email = ? AND token_hash != ?", (email, key)
    )
    return email
