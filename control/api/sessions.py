"""Dashboard sign-in sessions, kept in the database so a restart signs nobody out.

Contract:
- `install_sessions(app, store_of)` puts one `SessionStore` under the `SESSIONS` AppKey;
  nothing else creates one for the app, and nothing is module-global. Its rows live
  in the `dashboard_sessions` table of the store `store_of()` returns once the app runs.
- `SessionStore.create()` returns a new session id (`secrets.token_urlsafe(32)`) and its
  `Session`. The id goes only into the cookie: the table keys sessions by the hex
  SHA-256 of the id and holds nothing else secret, so a copy of the database cannot
  be turned into a session. The CSRF token is not stored at all: it is an HMAC of the
  id under a key derived from INTERNAL_SECRET, so it is the same after a restart and
  differs per session.
- `SessionStore.get(session_id)` returns the live session or None when unknown, idle
  longer than `idle_timeout` or older than `max_age` (wall-clock seconds, so both
  survive restarts). Use refreshes the idle timer, written at most every
  `touch_every` seconds (the dashboard polls every few seconds; the idle timeout is
  hours). Expired rows are deleted when met, on every `create()` and with every
  refresh; at most `max_sessions` exist at once (the least recently used goes first).
- `check_admin_token` and `check_csrf` compare in constant time.
- Nothing here logs or reprs a token, a session id or a CSRF token.
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
from aiohttp import web

from control.appkeys import SESSIONS
from control.db.store import Store, fetch_one

COOKIE_NAME = "clawfleet_session"
CSRF_HEADER = "X-CSRF-Token"
IDLE_TIMEOUT = 12 * 3600.0
MAX_AGE = 7 * 86400.0
MAX_SESSIONS = 1000
TOUCH_EVERY = 60.0
_CSRF_KEY_LABEL = b"clawfleet/dashboard-csrf/v1"


@dataclass
class Session:
    csrf_token: str = field(repr=False)
    created_at: float
    last_seen: float


class SessionStore:
    def __init__(
        self,
        store_of: Callable[[], Store],
        internal_secret: str,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        max_age: float = MAX_AGE,
        max_sessions: int = MAX_SESSIONS,
        touch_every: float = TOUCH_EVERY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.idle_timeout = idle_timeout
        self.max_age = max_age
        self.max_sessions = max_sessions
        self.touch_every = touch_every
        self.clock = clock
        self._store_of = store_of
        self._csrf_key = hmac.new(
            internal_secret.encode(), _CSRF_KEY_LABEL, hashlib.sha256
        ).digest()

    def __repr__(self) -> str:
        return "SessionStore()"

    async def count(self) -> int:
        row = await self._store_of().fetch_one("SELECT COUNT(*) AS n FROM dashboard_sessions")
        return int(row["n"]) if row else 0

    async def create(self) -> tuple[str, Session]:
        """A new session: (the id for the cookie, the session)."""
        now = self.clock()
        session_id = secrets.token_urlsafe(32)

        async def insert(conn: aiosqlite.Connection) -> None:
            await self._prune(conn, now)
            row = await fetch_one(conn, "SELECT COUNT(*) AS n FROM dashboard_sessions")
            excess = (int(row["n"]) if row else 0) - (self.max_sessions - 1)
            if excess > 0:
                await conn.execute(
                    "DELETE FROM dashboard_sessions WHERE id_hash IN (SELECT id_hash FROM "
                    "dashboard_sessions ORDER BY last_seen ASC LIMIT ?)",
                    (excess,),
                )
            await conn.execute(
                "INSERT INTO dashboard_sessions (id_hash, created_at, last_seen) VALUES (?, ?, ?)",
                (_key(session_id), now, now),
            )

        await self._store_of().write(insert)
        return session_id, Session(self._csrf(session_id), now, now)

    async def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        key = _key(session_id)
        row = await self._store_of().fetch_one(
            "SELECT created_at, last_seen FROM dashboard_sessions WHERE id_hash = ?", (key,)
        )
        if row is None:
            return None
        now = self.clock()
        created_at, last_seen = float(row["created_at"]), float(row["last_seen"])
        if self._expired(created_at, last_seen, now):
            await self.end(session_id)
            return None
        if now - last_seen >= self.touch_every:
            await self._store_of().write(lambda conn: self._touch(conn, key, now))
            last_seen = now
        return Session(self._csrf(session_id), created_at, last_seen)

    async def end(self, session_id: str | None) -> None:
        if not session_id:
            return
        key = _key(session_id)

        async def delete(conn: aiosqlite.Connection) -> None:
            await conn.execute("DELETE FROM dashboard_sessions WHERE id_hash = ?", (key,))

        await self._store_of().write(delete)

    async def _touch(self, conn: aiosqlite.Connection, key: str, now: float) -> None:
        # Re-checked inside the write: a concurrent sign-out or expiry must not revive it.
        row = await fetch_one(
            conn, "SELECT created_at, last_seen FROM dashboard_sessions WHERE id_hash = ?", (key,)
        )
        if row is not None and not self._expired(row["created_at"], row["last_seen"], now):
            await conn.execute(
                "UPDATE dashboard_sessions SET last_seen = ? WHERE id_hash = ?", (now, key)
            )
        await self._prune(conn, now)

    async def _prune(self, conn: aiosqlite.Connection, now: float) -> None:
        await conn.execute(
            "DELETE FROM dashboard_sessions WHERE last_seen < ? OR created_at < ?",
            (now - self.idle_timeout, now - self.max_age),
        )

    def _expired(self, created_at: float, last_seen: float, now: float) -> bool:
        return now - last_seen > self.idle_timeout or now - created_at > self.max_age

    def _csrf(self, session_id: str) -> str:
        digest = hmac.new(self._csrf_key, _bytes(session_id), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def install_sessions(
    app: web.Application, store_of: Callable[[], Store], internal_secret: str
) -> SessionStore:
    """Gives `app` its session store (call once, from the app factory's path)."""
    app[SESSIONS] = SessionStore(store_of, internal_secret)
    return app[SESSIONS]


async def session_of(request: web.Request) -> Session | None:
    """The request's live dashboard session, if its cookie names one."""
    store = request.app.get(SESSIONS)
    if store is None:
        return None
    return await store.get(request.cookies.get(COOKIE_NAME))


def check_admin_token(presented: str, expected: str) -> bool:
    return hmac.compare_digest(_bytes(presented), _bytes(expected))


def check_csrf(session: Session, presented: str | None) -> bool:
    if not presented:
        return False
    return hmac.compare_digest(_bytes(presented), _bytes(session.csrf_token))


def _key(session_id: str) -> str:
    return hashlib.sha256(_bytes(session_id)).hexdigest()


def _bytes(text: str) -> bytes:
    # Cookies and form fields are caller-controlled: a lone surrogate must not raise.
    return text.encode("utf-8", "surrogatepass")
