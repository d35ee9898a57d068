"""Hetzner's rate limit as the latest replies announce it: `Reply` (what the response
hook saw of one reply) and `RateBudget` (the project's request bucket).

Contract: `RateBudget.observe(response)` is a `requests` response hook: it records the
reply's status, `X-Correlation-Id` and `RateLimit-*` headers for the thread that made
the request (`reply()`; `start()` clears it before a call) and keeps `limit`,
`remaining` and `reset` (epoch seconds) from the latest reply (3600 requests/hour per
project, shared with everything else on the project; last reply wins, so with a few
concurrent calls a value can be one request stale). `hold(what, longest)` is awaited
before every request: once a 429 (`refused`) or a reply saying no request is left
(`answered`) has set a time before which no request may go, it waits until then when
that is at most `longest` seconds away, and otherwise raises ProviderError
"rate_limited" with that `retry_after` at once: none is sent into a known-empty bucket.
The wait for one request is `shared.backoff.rate_limit_wait`. `clock` (epoch seconds) and
`sleep` are constructor parameters, real by default, so tests can drive the wait.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import requests

from control.capacity.providers.base import ProviderError
from shared.backoff import rate_limit_wait


@dataclass
class Reply:
    """What the response hook saw of the latest reply on this thread."""

    status: int = 0
    correlation_id: str | None = None
    reset: float | None = None
    limit: float | None = None
    remaining: float | None = None


def float_header(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


class RateBudget:
    """The request bucket of one Hetzner project (see the module docstring)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.clock = clock
        self.sleep = sleep
        self.limit: int | None = None
        self.remaining: int | None = None
        self.reset: float | None = None
        self._not_before = 0.0  # epoch seconds: no request before
        self._local = threading.local()

    def start(self) -> None:
        """A new call on this thread: forget the previous reply."""
        self._local.reply = Reply()

    def reply(self) -> Reply:
        """What the hook saw of this thread's latest reply."""
        reply: Reply = getattr(self._local, "reply", Reply())
        return reply

    def observe(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        """requests response hook: runs on the thread that made the request."""
        headers = response.headers
        reset = float_header(headers, "RateLimit-Reset")
        limit = float_header(headers, "RateLimit-Limit")
        remaining = float_header(headers, "RateLimit-Remaining")
        self._local.reply = Reply(
            status=response.status_code,
            correlation_id=headers.get("X-Correlation-Id"),
            reset=reset,
            limit=limit,
            remaining=remaining,
        )
        if limit is not None:
            self.limit = int(limit)
        if remaining is not None:
            self.remaining = int(remaining)
        if reset is not None:
            self.reset = reset

    def refused(self, exc: ProviderError) -> None:
        """A call failed: after a 429, nothing goes out before its `retry_after`."""
        if exc.kind == "rate_limited" and exc.retry_after is not None:
            self._not_before = max(self._not_before, self.clock() + exc.retry_after)

    def answered(self) -> None:
        """A call succeeded: when the bucket is empty, wait for the next request."""
        if self.remaining == 0:
            now = self.clock()
            reset_in = None if self.reset is None else self.reset - now
            wait = rate_limit_wait(self.limit, self.remaining, reset_in, rand=random.random())
            self._not_before = max(self._not_before, now + wait)

    async def hold(self, what: str, longest: float) -> None:
        """Waits until a request may go, or raises "rate_limited" when that is too far."""
        wait = self._not_before - self.clock()
        if wait <= 0:
            return
        if wait > longest:
            raise ProviderError(
                f"Hetzner API: {what} held back: rate limited for {wait:.1f} s more",
                kind="rate_limited",
                code="rate_limit_exceeded",
                retry_after=wait,
            )
        await self.sleep(wait)
