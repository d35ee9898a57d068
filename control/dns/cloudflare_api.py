"""Cloudflare's API as the DNS provider uses it: one client, its rate limit, its errors.

Contract:
- `CloudflareApi.request(what, call)` makes one SDK call under the client-side limiter
  (`RateLimiter`: BUDGET requests per WINDOW, below Cloudflare's 1200 per 5 minutes per
  user, shared by every client of that user) and retries it per
  `control.dns.provider.retry_delay` (a 429 waits `Retry-After`, else exponential
  back-off with jitter) until MAX_ATTEMPTS or the `deadline`, whichever comes first. A
  non-repeatable call (a create) is retried only after a 429; `once` never retries.
- Every failure is a `DnsError` (`error_from`) with the Cloudflare code, HTTP status and
  Retry-After. Only fields of the response body go into a message, never the request
  (its headers hold the token); `no_rights`/`rights_check` turn a 401/403 into a message
  that names CLOUDFLARE_API_TOKEN and the missing permission.
- The SDK's own retries are off (a timed-out POST would be repeated: a duplicate record)
  and only the token we were given may authenticate (the SDK would prefer a global key
  from the environment).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import cloudflare
from cloudflare import AsyncCloudflare

from control.dns.provider import DnsError, retry_delay

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_API_BASE = "https://api.cloudflare.com/client/v4"
ALREADY_EXISTS = frozenset({81057, 81058})  # "same settings" / "identical record" exists
RECORD_MISSING = 81044  # "Record does not exist."
ZONE_MISSING = frozenset({7003, 1001, 7000})  # could not route / invalid zone identifier
BUDGET = 1000  # requests per WINDOW we allow ourselves (Cloudflare: 1200 per 5 minutes)
WINDOW = 300.0
BURST = 50

Sleep = Callable[[float], Awaitable[None]]


class RateLimiter:
    """A token bucket of `burst` requests refilled at `budget / window` per second.

    Reservation style: `acquire` takes a token even when the bucket is empty and sleeps
    for the debt, so it never loops (and a test clock that does not move cannot hang it).
    Over any window the requests stay at most burst + budget (here 1050 < 1200)."""

    def __init__(
        self,
        budget: int = BUDGET,
        window: float = WINDOW,
        burst: int = BURST,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = budget / window
        self._burst = float(burst)
        self._tokens = float(burst)
        self._sleep = sleep
        self._clock = clock
        self._last = clock()

    async def acquire(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        self._tokens -= 1.0
        if self._tokens < 0:
            await self._sleep(-self._tokens / self._rate)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a `Retry-After` header: delta-seconds or an HTTP date; None if absent
    or unreadable."""
    if value is None or not value.strip():
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else datetime.now(UTC).timestamp()
    return max(0.0, when.timestamp() - current)


def error_from(what: str, exc: cloudflare.APIError) -> DnsError:
    """A DnsError from an SDK exception: code, message, status, Retry-After. Only fields
    of the response body go into the message, never the request (its headers hold the
    token)."""
    if isinstance(exc, cloudflare.APITimeoutError):
        return DnsError(f"Cloudflare {what}: timed out", upstream_status=0)
    if isinstance(exc, cloudflare.APIConnectionError):
        return DnsError(f"Cloudflare {what}: no answer (connection error)", upstream_status=0)
    status = getattr(exc, "status_code", None)
    code: int | None = None
    message = "unexpected answer"
    if exc.errors:
        code = exc.errors[0].code
        message = exc.errors[0].message or message
    retry_after = None
    response = getattr(exc, "response", None)
    if response is not None:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
    label = f"HTTP {status}" if status is not None else "error"
    if code is not None:
        label += f", code {code}"
    return DnsError(
        f"Cloudflare {what}: {label}: {message}",
        upstream_code=code,
        upstream_status=status,
        retry_after=retry_after,
    )


def field(obj: Any, name: str, default: Any = None) -> Any:
    """A field of an SDK record model (a union over every record type)."""
    return getattr(obj, name, default)


class CloudflareApi:
    """The client of one zone (see the module docstring)."""

    def __init__(
        self,
        token: str,
        zone_id: str,
        api_base: str | None = None,
        timeout: float = 10.0,
        *,
        deadline: float = 120.0,
        sleep: Sleep = asyncio.sleep,
        limiter: RateLimiter | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not token:
            raise DnsError("CLOUDFLARE_API_TOKEN is empty; DNS_PROVIDER=cloudflare needs it")
        if not zone_id:
            raise DnsError("CLOUDFLARE_ZONE_ID is empty; DNS_PROVIDER=cloudflare needs it")
        self.zone_id = zone_id
        self.zone_name: str | None = None  # known once verify has read the zone
        self._deadline = deadline
        self._sleep = sleep
        self._rand = rand  # the jitter of retry waits (tests fix it)
        self._limiter = limiter or RateLimiter(sleep=sleep)
        self.client = AsyncCloudflare(
            api_token=token,
            base_url=api_base or DEFAULT_API_BASE,
            max_retries=0,
            timeout=timeout,
        )
        # The SDK also reads CLOUDFLARE_API_KEY / CLOUDFLARE_EMAIL /
        # CLOUDFLARE_API_USER_SERVICE_KEY from the environment and prefers a global key
        # over the token: only the token we were given may authenticate.
        self.client.api_key = None
        self.client.api_email = None
        self.client.user_service_key = None

    async def close(self) -> None:
        await self.client.close()

    def delay(self, error: DnsError, attempt: int) -> float | None:
        """`retry_delay` for `error` after `attempt`, with this client's jitter."""
        return retry_delay(error.upstream_status or 0, attempt, error.retry_after, self._rand())

    def out_of_time(self, started: float, delay: float) -> bool:
        return time.monotonic() - started + delay > self._deadline

    async def sleep(self, seconds: float) -> None:
        await self._sleep(seconds)

    async def request(
        self,
        what: str,
        call: Callable[[], Awaitable[T]],
        *,
        repeatable: bool = True,
        once: bool = False,
    ) -> T:
        """One API call under the limiter, retried per `retry_delay` within the deadline.

        A non-repeatable call (a create) is retried only after 429, which Cloudflare
        answers before doing anything; any other failure goes back to the caller, which
        looks before it writes again. `once`: never retried (the caller retries)."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            await self._limiter.acquire()
            try:
                return await call()
            except cloudflare.APIError as exc:
                error = error_from(what, exc)
            if once or (not repeatable and error.upstream_status != 429):
                raise error
            delay = self.delay(error, attempt)
            if delay is None or self.out_of_time(started, delay):
                raise error
            log.warning("dns: %s; retry %d in %.1fs", error.message, attempt, delay)
            await self._sleep(delay)

    def no_rights(self, permission: str, error: DnsError) -> DnsError:
        zone = (
            f"{self.zone_name} (zone id {self.zone_id})"
            if self.zone_name
            else (f"zone {self.zone_id}")
        )
        return DnsError(
            f"CLOUDFLARE_API_TOKEN lacks {permission} on {zone}: {error.message}. "
            "Give the token Zone:DNS:Edit and Zone:Read on this zone only.",
            upstream_code=error.upstream_code,
            upstream_status=error.upstream_status,
        )

    def rights_check(self, error: DnsError, permission: str = "Zone:DNS:Edit") -> DnsError:
        """401/403 on a DNS call means the token's rights are wrong: say which (once)."""
        if error.upstream_status in (401, 403) and "CLOUDFLARE_API_TOKEN" not in error.message:
            return self.no_rights(permission, error)
        return error
