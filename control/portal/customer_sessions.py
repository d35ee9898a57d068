"""Customers' portal sessions, separate from the operators' dashboard sessions: the
only writer of the `portal_sessions` table (docs/portal.md, docs/security.md).

Contract:
- A session belongs to the e-mail address a one-time link proved; it sees the users
  that address paid for (control/portal/checkouts.py `users_with_email`) and nothing
  else. Its cookie is `clawfleet_portal` on Path=/portal, never the dashboard's.
- `PortalSessions.create(email)` returns a new id (`secrets.token_urlsafe(32)`, only
  in the cookie) and its `Customer`; the table keys rows by the id's hex SHA-256. The
  CSRF token is not stored: an HMAC of the id under a key derived from INTERNAL_SECRET
  with a label of its own, so a dashboard CSRF token is never a portal one.
- `get(id)` returns the live session or None when unknown, idle over `IDLE_TIMEOUT` or
  older than `MAX_AGE` (wall-clock seconds: sessions survive restarts); use refreshes
  the idle timer at most every `TOUCH_EVERY` seconds. Expired rows are deleted when
  met and on every `create`; an address keeps at most `MAX_PER_EMAIL` sessions (its
  least recently used go first).
- `end(id)` ends one session; `end_all(email)` every session of that address (rotating
  access does that).
- Nothing here logs or reprs an id, a CSRF token or an address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiosqlite

from control.db.store import Store

COOKIE_NAME = "clawfleet_portal"
COOKIE_PATH = "/portal"
CSRF_HEADER = "X-CSRF-Token"
IDLE_TIMEOUT = 24 * 3600.0
MAX_AGE = 30 * 86400.0
MAX_PER_EMAIL = 20
TOUCH_EVERY = 60.0
_CSRF_KEY_LABEL = b"clawfleet/portal-csrf/v1"


@dataclass(frozen=True)
class Customer:
    email: str = field(repr=False)
    csrf_token: str = field(repr=False)


class PortalSessions:
    def __init__(
        self,
        store_of: Callable[[], Store],
        internal_secret: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self._store_of = store_of
        self._csrf_key = hmac.new(
            internal_secret.encode(), _CSRF_KEY_LABEL, hashlib.sha256
        ).digest()

    def __repr__(self) -> str:
        return "PortalSessions()"

    async def create(self, email: str) -> tuple[str, Customer]:
        now = self.clock()
        session_id = secrets.token_urlsafe(32)

        async def insert(conn: aiosqlite.Connection) -> None:
            await self._prune(conn, now)
            await conn.execute(
                "DELETE FROM portal_sessions WHERE id_hash IN (SELECT id_hash FROM "
                "portal_sessions WHERE email = ? ORDER BY last_seen DESC LIMIT -1 OFFSET ?)",
                (email, MAX_PER_EMAIL - 1),
            )
            await conn.execute(
                "INSERT INTO portal_sessions (id_hash, email, created_at, last_seen) "
                "VALUES (?, ?, ?, ?)",
                (_key(session_id), email, now, now),
            )

        await self._store_of().write(insert)
        return session_id, Customer(email, self._csrf(session_id))

    async def get(self, session_id: str | None) -> Customer | None:
        if not session_id:
            return None
        key = _key(session_id)
        row = await self._store_of().fetch_one(
            "SELECT email, created_at, last_seen FROM portal_sessions WHERE id_hash = ?", (key,)
        )
        if row is None:
            return None
        now = self.clock()
        if _expired(float(row["created_at"]), float(row["last_seen"]), now):
            await self.end(session_id)
            return None
        if now - float(row["last_seen"]) >= TOUCH_EVERY:
            await self._store_of().write(lambda conn: self._touch(conn, key, now))
        return Customer(str(row["email"]), self._csrf(session_id))

    async def end(self, session_id: str | None) -> None:
        if not session_id:
            return
        key = _key(session_id)

        async def delete(conn: aiosqlite.Connection) -> None:
            await conn.execute("DELETE FROM portal_sessions WHERE id_hash = ?", (key,))

        await self._store_of().write(delete)

    async def end_all(self, email: str) -> None:
        async def delete(conn: aiosqlite.Connection) -> None:
            await conn.execute("DELETE FROM portal_sessions WHERE email = ?", (email,))

        await self._store_of().write(delete)

    def check_csrf(self, customer: Customer, presented: str | None) -> bool:
        if not presented:
            return False
        return hmac.compare_digest(_bytes(presented), _bytes(customer.csrf_token))

    async def _touch(self, conn: aiosqlite.Connection, key: str, now: float) -> None:
        # Only a row still live: a concurrent sign-out or expiry must not be revived.
        await conn.execute(
            "UPDATE portal_sessions SET last_seen = ? WHERE id_hash = ? "
            "AND last_seen >= ? AND created_at >= ?",
            (now, key, now - IDLE_TIMEOUT, now - MAX_AGE),
        )
        await self._prune(conn, now)

    async def _prune(self, conn: aiosqlite.Connection, now: float) -> None:
        await conn.execute(
            "DELETE FROM portal_sessions WHERE last_seen < ? OR created_at < ?",
            (now - IDLE_TIMEOUT, now - MAX_AGE),
        )

    def _csrf(self, session_id: str) -> str:
        digest = hmac.new(self._csrf_key, _bytes(session_id), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _expired(created_at: float, last_seen: float, now: float) -> bool:
    return now - last_seen > IDLE_TIMEOUT or now - created_at > MAX_AGE


def _key(session_id: str) -> str:
    return hashlib.sha256(_bytes(session_id)).hexdigest()


def _bytes(text: str) -> bytes:
    # Cookies and headers are caller-controlled: a lone surrogate must not raise.
    return text.encode("utf-8", "surrogatepass")
