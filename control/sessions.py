"""Dashboard sign-in sessions: an in-memory store owned by the app.

Contract:
- `install_sessions(app)` puts one `SessionStore` under the `SESSIONS` AppKey; nothing
  else creates one, and nothing is module-global. Sessions live only in memory: a
  control-plane restart signs every operator out.
- `SessionStore.create()` returns a new `Session` whose id is `secrets.token_urlsafe(32)`
  and which carries its own random CSRF token. The id goes only into the cookie; the
  store keys sessions by the SHA-256 of the id, so a lookup never compares secrets.
- `SessionStore.get(session_id)` returns the live session and refreshes its idle
  timer, or None when unknown, idle longer than `idle_timeout` or older than
  `max_age`. Expired sessions are dropped on access and on every `create()`; at most
  `max_sessions` live at once (the least recently used goes first).
- `check_admin_token` and `check_csrf` compare in constant time.
- Nothing here logs or reprs a token, a session id or a CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

COOKIE_NAME = "clawfleet_session"
CSRF_HEADER = "X-CSRF-Token"
IDLE_TIMEOUT = 12 * 3600.0
MAX_AGE = 7 * 86400.0
MAX_SESSIONS = 1000


@dataclass
class Session:
    csrf_token: str = field(repr=False)
    created_at: float
    last_seen: float


class SessionStore:
    def __init__(
        self,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        max_age: float = MAX_AGE,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_timeout = idle_timeout
        self.max_age = max_age
        self.max_sessions = max_sessions
        self._clock = clock
        self._sessions: OrderedDict[bytes, Session] = OrderedDict()

    def __repr__(self) -> str:
        return f"SessionStore({len(self._sessions)} sessions)"

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self) -> tuple[str, Session]:
        """A new session: (the id for the cookie, the session)."""
        now = self._clock()
        self._expire(now)
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
        session_id = secrets.token_urlsafe(32)
        session = Session(csrf_token=secrets.token_urlsafe(32), created_at=now, last_seen=now)
        self._sessions[_key(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        key = _key(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self._clock()
        if self._expired(session, now):
            del self._sessions[key]
            return None
        session.last_seen = now
        self._sessions.move_to_end(key)
        return session

    def end(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(_key(session_id), None)

    def _expired(self, session: Session, now: float) -> bool:
        return (
            now - session.last_seen > self.idle_timeout or now - session.created_at > self.max_age
        )

    def _expire(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if self._expired(s, now)]:
            del self._sessions[key]


SESSIONS = web.AppKey("dashboard_sessions", SessionStore)


def install_sessions(app: web.Application, store: SessionStore | None = None) -> SessionStore:
    """Gives `app` its session store (call once, from the app factory's path)."""
    app[SESSIONS] = store if store is not None else SessionStore()
    return app[SESSIONS]


def session_of(request: web.Request) -> Session | None:
    """The request's live dashboard session, if its cookie names one."""
    store = request.app.get(SESSIONS)
    if store is None:
        return None
    return store.get(request.cookies.get(COOKIE_NAME))


def check_admin_token(presented: str, expected: str) -> bool:
    return hmac.compare_digest(presented.encode(), expected.encode())


def check_csrf(session: Session, presented: str | None) -> bool:
    if not presented:
        return False
    return hmac.compare_digest(presented.encode(), session.csrf_token.encode())


def _key(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()
