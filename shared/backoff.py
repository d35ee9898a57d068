"""Retry timing, as pure functions: how long to wait after a failure, and how long a
rate-limited API makes us wait. Callers draw the randomness (`rand` in [0, 1)) so that
tests can fix it.

This is the only retry formula in the code base: every backoff (the agent's client and
reconcile, the Stripe inbox, DNS, the provider validation, the autoscaler) calls it.

- `backoff_delay(attempt, base, cap, rand, spread=0.5)`: capped exponential backoff with
  jitter in [d * (1 - spread), d], d = min(cap, base * 2**attempt) (attempt 0 is the
  first retry). Spreading keeps clients that failed together from retrying in lockstep,
  and the floor means a retry never comes sooner than (1 - spread) of the nominal delay.
- `jittered(interval, spread, rand)`: a periodic interval spread by +-`spread` (a
  fraction), so a fleet started together does not beat in step.
- `rate_limit_wait(limit, remaining, reset_in, rand)`: for a token-bucket API that
  announces `RateLimit-Limit` (requests per `window`), `RateLimit-Remaining` and
  `RateLimit-Reset` (when the bucket is FULL again, not when the next request is
  allowed): the time until ONE request is available, plus up to `jitter` of it, never
  longer than `reset_in` (a full bucket certainly has a request).
"""

from __future__ import annotations

DEFAULT_WINDOW = 3600.0  # Hetzner: RateLimit-Limit is per hour, refilled evenly


def backoff_delay(
    attempt: int, *, base: float, cap: float, rand: float, spread: float = 0.5
) -> float:
    """Seconds to wait before retry number `attempt` + 1 (see the module docstring)."""
    ceiling = min(cap, base * 2.0 ** min(max(attempt, 0), 30))  # bounded: no overflow
    u = min(max(rand, 0.0), 1.0)
    share = min(max(spread, 0.0), 1.0)
    return ceiling * (1.0 - share) + u * ceiling * share


def jittered(interval: float, *, spread: float, rand: float) -> float:
    """`interval` spread by +-`spread` (see the module docstring)."""
    u = min(max(rand, 0.0), 1.0)
    return interval * (1.0 - spread + 2.0 * spread * u)


def rate_limit_wait(
    limit: float | None,
    remaining: float | None,
    reset_in: float | None,
    *,
    rand: float,
    jitter: float = 0.5,
    window: float = DEFAULT_WINDOW,
) -> float:
    """Seconds until one request is allowed again (see the module docstring).

    Without headers, assume one request per second (Hetzner's default refill)."""
    if remaining is not None and remaining >= 1:
        return 0.0
    missing = (limit or 0) - max(remaining or 0, 0)
    if reset_in is not None and reset_in > 0 and missing >= 1:
        per_request = reset_in / missing  # the refill rate the headers announce
    elif limit:
        per_request = window / limit
    else:
        per_request = 1.0
    wait = per_request * (1.0 + jitter * min(max(rand, 0.0), 1.0))
    if reset_in is not None and reset_in >= 0:
        wait = min(wait, reset_in)
    return wait
