"""The sign-in verifier: Traefik's forward auth for gated users (docs/signin.md).

Contract: an aiohttp app the daemon serves on 127.0.0.1:AUTH_PORT. It knows, from the
worker's current desired set only (so it keeps working while the control plane is
down), which user and sign-in key each route host belongs to (`set_specs`).

- `GET /_clawfleet/signin?ticket=...` for host h: the ticket must be valid
  (shared/signin.py) for h's user and key and not used before (nonces are remembered
  until their ticket expires, at most MAX_NONCES at once: when full, sign-in is
  refused with 503 rather than forgetting a live nonce). With a `spent` file (the
  daemon's STATE_DIR/signin-spent) each used nonce is appended and fsynced before the
  cookie is set, and read back at start, so a restarted agent refuses a link used
  before the restart too. Then it sets a host-only
  session cookie (never a Domain attribute, so no other subdomain ever receives it;
  `Secure` when X-Forwarded-Proto is https) and answers 303 to `/`.
- `GET /_clawfleet/auth` (Traefik's forwardAuth): 200 with `<identity_header>:
  <user id>` when the session cookie is valid for h's user and key, else 401 with a
  short plain page and nothing about the user.
- Host h is X-Forwarded-Host (set by Traefik), else Host, without port, lower case.
  An unknown host, or a host whose spec has no sign-in key, is 404. Every input is
  bounded: aiohttp's header limits, and tickets/cookies longer than MAX_VALUE are
  invalid without being parsed.

Nothing here logs a ticket, cookie or key. The clock is injected for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from agent.state import atomic_write
from shared import signin
from shared.protocol import ContainerSpec

PREFIX = "/_clawfleet/"
MAX_VALUE = 512
MAX_NONCES = 10_000
_SIGN_IN_PAGE = (
    "Sign-in required.\n\nOpen the sign-in link your provider gives you "
    "(for example from your account page) to use this agent.\n"
)


@dataclass(frozen=True)
class Gate:
    user_id: str
    key: str
    identity_header: str


def gates(specs: Iterable[ContainerSpec]) -> dict[str, Gate]:
    """route host -> gate, for the specs that carry a sign-in key."""
    return {
        s.route_host.lower(): Gate(s.user_id, s.signin_key, s.identity_header)
        for s in specs
        if s.route_host and s.signin_key
    }


def request_host(request: web.Request) -> str:
    raw = request.headers.get("X-Forwarded-Host") or request.headers.get("Host") or ""
    host = raw.split(",", 1)[0].strip()
    if host.startswith("["):
        return ""  # no IPv6 literals: route hosts are names
    return host.rsplit(":", 1)[0].lower() if ":" in host else host.lower()


_SPENT_LINE = re.compile(r"([0-9a-f]{32}) ([0-9]{1,12})")


class Verifier:
    def __init__(self, clock: Callable[[], float] = time.time, spent: Path | None = None) -> None:
        self.clock = clock
        self._gates: dict[str, Gate] = {}
        self._used: dict[str, float] = {}  # ticket nonce -> its expiry
        self._spent = spent
        if spent is not None:
            self._load(spent)

    def _load(self, spent: Path) -> None:
        """The nonces still live in `spent`; the file is rewritten with only those."""
        now = self.clock()
        with contextlib.suppress(FileNotFoundError):
            for line in spent.read_text(errors="replace").splitlines()[-MAX_NONCES:]:
                found = _SPENT_LINE.fullmatch(line)
                if found and int(found[2]) >= now:
                    self._used[found[1]] = float(found[2])
        text = "".join(f"{n} {int(e)}\n" for n, e in self._used.items())
        atomic_write(spent, text.encode(), mode=0o600)

    def _persist(self, nonce: str, expires: float) -> None:
        if self._spent is None:
            return
        fd = os.open(self._spent, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{nonce} {int(expires)}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def set_specs(self, specs: Iterable[ContainerSpec]) -> None:
        self._gates = gates(specs)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024)
        app.router.add_get(PREFIX + "signin", self.signin)
        app.router.add_get(PREFIX + "auth", self.auth)
        return app

    def _gate(self, request: web.Request) -> Gate:
        gate = self._gates.get(request_host(request))
        if gate is None:
            raise web.HTTPNotFound(text="Not found.\n")
        return gate

    async def _remember(self, nonce: str, expires: float) -> bool:
        """False when the nonce was used already (or no room is left to remember it)."""
        now = self.clock()
        if nonce in self._used:
            return False
        if len(self._used) >= MAX_NONCES:
            for gone in [n for n, e in self._used.items() if e < now]:
                del self._used[gone]
            if len(self._used) >= MAX_NONCES:
                raise web.HTTPServiceUnavailable(text="Too many sign-ins; try again shortly.\n")
        # Claimed before the write, so a concurrent use of the same link is refused; the
        # fsync runs off the event loop, and before the cookie: a crash forgets nothing.
        self._used[nonce] = expires
        try:
            await asyncio.to_thread(self._persist, nonce, expires)
        except OSError:
            del self._used[nonce]
            raise web.HTTPServiceUnavailable(text="Sign-in is unavailable; try again.\n") from None
        return True

    async def signin(self, request: web.Request) -> web.StreamResponse:
        gate = self._gate(request)
        ticket = request.query.get("ticket", "")
        now = self.clock()
        nonce = (
            signin.check_ticket(gate.key, gate.user_id, ticket, now)
            if len(ticket) <= MAX_VALUE
            else None
        )
        # The ticket is valid, so its third field is its expiry (the checked format).
        if nonce is None or not await self._remember(nonce, float(ticket.split(".")[2])):
            raise web.HTTPForbidden(
                text="This sign-in link is invalid, expired or already used. Ask for a new one.\n"
            )
        expires = int(now) + signin.SESSION_SECONDS
        value = signin.make_session(gate.key, gate.user_id, expires, signin.new_nonce())
        response = web.Response(status=303, headers={"Location": "/"})
        response.set_cookie(
            signin.COOKIE,
            value,
            path="/",
            max_age=signin.SESSION_SECONDS,
            httponly=True,
            samesite="Lax",
            secure=request.headers.get("X-Forwarded-Proto", "").lower() == "https",
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    async def auth(self, request: web.Request) -> web.StreamResponse:
        gate = self._gate(request)
        value = request.cookies.get(signin.COOKIE, "")
        ok = len(value) <= MAX_VALUE and signin.check_session(
            gate.key, gate.user_id, value, self.clock()
        )
        if not ok:
            return web.Response(status=401, text=_SIGN_IN_PAGE)
        headers = {gate.identity_header: gate.user_id} if gate.identity_header else {}
        return web.Response(status=200, headers=headers)


async def serve(verifier: Verifier, port: int, host: str = "127.0.0.1") -> web.AppRunner:
    """Starts the verifier; the caller cleans the runner up."""
    runner = web.AppRunner(
        verifier.app(), access_log=None, handler_cancellation=True, max_line_size=4096
    )
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
