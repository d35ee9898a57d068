"""Per-address limits on failed credentials: dashboard sign-in, the admin Bearer token
and the metrics token.

Contract:
- `FailureLimiter` is a token bucket per client address (control/api/edge.py
  `client_key`): `burst` failures at once, then one more every `refill_seconds`.
  Only failures take tokens; a correct credential costs nothing. Memory is bounded:
  at most `max_keys` addresses are remembered, the least recently failing forgotten
  first (forgetting only ever lets an address try again sooner, never locks one out).
  Time is passed in (`now`), so the decisions are pure and tested with tables.
- `AuthGuard` (one per app under `AUTH_GUARD`, `install_auth_guard`) applies it to a
  request: `refuse_if_blocked` raises `RateLimited` (429 `rate_limited`, with
  `Retry-After` in whole seconds) *before* the credential is compared, so a blocked
  address learns nothing from its guesses; `failed` takes a token. When an address
  runs out, an `auth_blocked` event is recorded, itself limited by a global bucket
  (`EVENT_BURST`, then one per `EVENT_REFILL_SECONDS`) so an attacker with many
  addresses cannot flood the events table; the next event counts the ones left out.
  `clock` is an attribute so tests can inject one.
- Nothing here logs or stores a presented credential.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from control.api import edge
from control.appkeys import AUTH_GUARD
from control.db import events
from control.db.store import Store
from control.errors import ClawfleetError
from control.settings import Settings

log = logging.getLogger(__name__)
BURST = 10
REFILL_SECONDS = 6.0  # after the burst: 10 guesses a minute, 600 an hour, per address
MAX_KEYS = 10_000
EVENT_BURST = 5
EVENT_REFILL_SECONDS = 60.0


class RateLimited(ClawfleetError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


@dataclass
class _Bucket:
    tokens: float
    updated: float


class FailureLimiter:
    def __init__(
        self,
        *,
        burst: int = BURST,
        refill_seconds: float = REFILL_SECONDS,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.burst = burst
        self.refill_seconds = refill_seconds
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until `key` may try again; 0 when it may now."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        tokens = self._refilled(bucket, now)
        return 0.0 if tokens >= 1 else (1 - tokens) * self.refill_seconds

    def fail(self, key: str, now: float) -> bool:
        """Takes one token for a failure; True when that left `key` blocked."""
        bucket = self._buckets.pop(key, None)
        tokens = float(self.burst) if bucket is None else self._refilled(bucket, now)
        tokens = max(0.0, tokens - 1)
        while len(self._buckets) >= self.max_keys:
            self._buckets.popitem(last=False)
        self._buckets[key] = _Bucket(tokens, now)
        return tokens < 1

    def _refilled(self, bucket: _Bucket, now: float) -> float:
        gained = max(0.0, now - bucket.updated) / self.refill_seconds
        return min(float(self.burst), bucket.tokens + gained)


class EventGate:
    """A global bucket for `auth_blocked` events; counts the ones it leaves out."""

    def __init__(
        self, *, burst: int = EVENT_BURST, refill_seconds: float = EVENT_REFILL_SECONDS
    ) -> None:
        self._limiter = FailureLimiter(burst=burst, refill_seconds=refill_seconds, max_keys=1)
        self.suppressed = 0

    def admit(self, now: float) -> int | None:
        """None: leave this event out. Otherwise how many were left out before it."""
        if self._limiter.retry_after("all", now) > 0:
            self.suppressed += 1
            return None
        self._limiter.fail("all", now)
        left_out, self.suppressed = self.suppressed, 0
        return left_out


EventSink = Callable[[str], Awaitable[None]]


class AuthGuard:
    def __init__(
        self,
        behind_proxy: bool,
        record_event: EventSink,
        *,
        limiter: FailureLimiter | None = None,
        gate: EventGate | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.behind_proxy = behind_proxy
        self.limiter = limiter or FailureLimiter()
        self.gate = gate or EventGate()
        self.clock = clock
        self._record_event = record_event
        self._on_refused = on_refused

    def key(self, request: web.Request) -> str:
        return edge.client_key(
            request.remote, request.headers.get("X-Forwarded-For"), self.behind_proxy
        )

    def refuse_if_blocked(self, request: web.Request, surface: str) -> None:
        wait = self.limiter.retry_after(self.key(request), self.clock())
        if wait > 0:
            if self._on_refused is not None:
                self._on_refused(surface)
            raise RateLimited(
                f"too many failed {surface} attempts from your address; "
                "try again after Retry-After seconds",
                retry_after=max(1, math.ceil(wait)),
            )

    async def failed(self, request: web.Request, surface: str) -> None:
        key = self.key(request)
        now = self.clock()
        if not self.limiter.fail(key, now):
            return
        left_out = self.gate.admit(now)
        if left_out is None:
            return
        message = (
            f"{surface}: {key} blocked after {self.limiter.burst} failed attempts "
            f"(then one every {self.limiter.refill_seconds:g} s)"
        )
        if left_out:
            message += f"; {left_out} more blocks not recorded"
        log.warning("%s", message)
        await self._record_event(message)


def install_auth_guard(
    app: web.Application,
    settings: Settings,
    store_of: Callable[[], Store],
    on_refused: Callable[[str], None] | None = None,
) -> AuthGuard:
    """Gives `app` its guard (call once, from the app factory); events go to the store
    `store_of()` returns once the app runs."""

    async def record(message: str) -> None:
        await store_of().write(lambda conn: events.record(conn, "auth_blocked", message))

    guard = AuthGuard(
        edge.behind_proxy(settings.public_url, settings.listen_port), record, on_refused=on_refused
    )
    app[AUTH_GUARD] = guard
    return guard
