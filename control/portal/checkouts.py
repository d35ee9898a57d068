"""The `checkouts` table's only writer: a sign-up's Stripe Checkout and the subdomain
it reserves (docs/portal.md).

Contract:
- A checkout is `open` from the sign-up until it is `paid` (Stripe's webhook created
  its user: the user id is the Checkout's `client_reference_id`) or `expired` (past
  `expires_at`, or released when the buyer came back from Checkout without paying).
  Nothing here creates a user: the webhook stays the only source of truth, and a
  checkout is marked paid only once that user exists (`settle`, `mark_paid`) and is
  not provisional (control/users/prestart.py: started at sign-up, not paid yet; it
  neither pays its checkout nor keeps it from being released, nor counts as the
  e-mail's user in `users_with_email`). Rotating
  the user's access ends its status page for good (`ended`, `end_status_page`).
- `expires_at` is when the reservation ends: the Checkout Session's own expiry plus
  `HOLD_GRACE`, so that a payment completed in the session's last moment still finds
  its name free when its webhook arrives a little late. While a checkout is open and
  unexpired nobody else may take its subdomain: `reserve` refuses (409
  `subdomain_taken`) and control/billing/claims.py skips it for other users.
- `reserve` runs in the caller's write transaction (BEGIN IMMEDIATE, so two buyers'
  reservations are serialized) and settles the table first; a partial unique index
  keeps at most one open checkout per subdomain even so.
- Only `token_hash` (sha256 hex of the status page's token) is stored, never the token.
- Reads take a transaction's connection or the Store. For other parts of the portal: `users_with_email` (user ids of paid checkouts,
  i.e. whose user the webhook created, for an e-mail address, case-insensitive) and
  `open_checkouts` ((plan, count) of open, unexpired checkouts created since a time
  whose user does not exist yet: demand about to arrive).
"""

from __future__ import annotations

import hashlib
import time

import aiosqlite

from control.db.store import Database, Row, Store, fetch_all
from control.errors import Conflict
from control.users.prestart import provisional_sql

# Users a payment created or adopted: a provisional user (started while its buyer is on
# the checkout page, control/users/prestart.py) does not make its checkout paid.
PAID_USERS = f"(SELECT id FROM users WHERE NOT {provisional_sql()})"

HOLD_GRACE = 600.0  # seconds past the Checkout Session's expiry that its name stays held
Source = aiosqlite.Connection | Store  # reads take either: a transaction's, or the store's


class SubdomainTaken(Conflict):
    code = "subdomain_taken"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def _rows(source: Source, sql: str, params: tuple[object, ...]) -> list[Row]:
    if isinstance(source, Database):  # either store (SQLite's or PostgreSQL's)
        return await source.fetch_all(sql, params)
    return await fetch_all(source, sql, params)


async def subdomain_taken(conn: Source, subdomain: str, now: float) -> bool:
    """A user has it, or an open checkout holds it."""
    rows = await _rows(
        conn,
        "SELECT 1 FROM users WHERE subdomain = ? UNION ALL "
        "SELECT 1 FROM checkouts WHERE subdomain = ? AND state = 'open' AND expires_at > ?",
        (subdomain, subdomain, now),
    )
    return bool(rows)


async def settle(conn: aiosqlite.Connection, now: float) -> None:
    """Open checkouts whose user exists are paid; the rest past their hold expire."""
    await conn.execute(
        "UPDATE checkouts SET state = 'paid', updated_at = ? "
        f"WHERE state = 'open' AND user_id IN {PAID_USERS}",
        (now,),
    )
    await conn.execute(
        "UPDATE checkouts SET state = 'expired', updated_at = ? "
        "WHERE state = 'open' AND expires_at <= ?",
        (now, now),
    )


async def reserve(conn: aiosqlite.Connection, row: dict[str, str | float], now: float) -> None:
    """Inserts an open checkout (`row`: id, token_hash, user_id, subdomain, plan, email,
    expires_at) unless its subdomain is taken (SubdomainTaken)."""
    await settle(conn, now)
    subdomain = str(row["subdomain"])
    if await subdomain_taken(conn, subdomain, now):
        raise SubdomainTaken(f"the name {subdomain!r} is taken: choose another")
    await conn.execute(
        "INSERT INTO checkouts (id, token_hash, user_id, subdomain, plan, email, state, "
        "created_at, expires_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'open', ?, ?, ?)",
        (
            row["id"],
            row["token_hash"],
            row["user_id"],
            subdomain,
            row["plan"],
            row["email"],
            now,
            row["expires_at"],
            now,
        ),
    )


async def attach_session(conn: aiosqlite.Connection, checkout_id: str, session_id: str) -> None:
    await conn.execute(
        "UPDATE checkouts SET stripe_session_id = ? WHERE id = ?", (session_id, checkout_id)
    )


async def release(conn: aiosqlite.Connection, checkout_id: str, now: float) -> bool:
    """Ends an open checkout's reservation (its Checkout was not paid); False when it
    was not open."""
    async with conn.execute(  # `async with`: sent now, for its row count
        "UPDATE checkouts SET state = 'expired', updated_at = ? "
        f"WHERE id = ? AND state = 'open' AND user_id NOT IN {PAID_USERS}",
        (now, checkout_id),
    ) as cursor:
        return cursor.rowcount == 1


async def mark_paid(conn: aiosqlite.Connection, checkout_id: str, now: float) -> None:
    await conn.execute(
        "UPDATE checkouts SET state = 'paid', updated_at = ? WHERE id = ? "
        f"AND state NOT IN ('paid', 'ended') AND user_id IN {PAID_USERS}",
        (now, checkout_id),
    )


async def end_status_page(conn: aiosqlite.Connection, user_id: str, now: float) -> None:
    """Access rotated: the user's status page ends (`ended`), since its Open makes fresh
    sign-in links for as long as the page lives and its link may have leaked."""
    await conn.execute(
        "UPDATE checkouts SET state = 'ended', updated_at = ? WHERE user_id = ?", (now, user_id)
    )


async def by_token(conn: Source, token: str) -> Row | None:
    rows = await _rows(conn, "SELECT * FROM checkouts WHERE token_hash = ?", (token_hash(token),))
    return rows[0] if rows else None


async def users_with_email(conn: Source, email: str) -> list[str]:
    rows = await _rows(
        conn,
        "SELECT c.user_id FROM checkouts c JOIN users u ON u.id = c.user_id "
        f"WHERE c.email = ? COLLATE NOCASE AND NOT {provisional_sql('u.billing_status')} "
        "ORDER BY c.created_at",
        (email,),
    )
    return [row["user_id"] for row in rows]


async def open_checkouts(
    conn: Source, since: float, now: float | None = None
) -> list[tuple[str, int]]:
    rows = await _rows(
        conn,
        "SELECT plan, COUNT(*) AS n FROM checkouts WHERE state = 'open' AND created_at >= ? "
        "AND expires_at > ? AND user_id NOT IN (SELECT id FROM users) GROUP BY plan ORDER BY plan",
        (since, time.time() if now is None else now),
    )
    return [(row["plan"], row["n"]) for row in rows]
