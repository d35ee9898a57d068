"""How often one worker may call the agent protocol: a compromised worker holds a valid
key, so a signature alone does not stop it from sending heartbeats or polls as fast as
it can (docs/security.md, "A compromised worker").

Contract:
- `AgentPace.admit(kind, worker_id, now)` takes one token from that worker's bucket for
  `kind` (`heartbeat`, `poll`): a burst, then AGENT_CALLS_PER_SECOND. With none
  left it raises `RateLimited` (429 `rate_limited`, `Retry-After` in whole seconds),
  which the agent retries with its back-off (agent/client.py).
- Called after the request's signature and nonce were verified (only a worker's own
  requests take its tokens; an attacker without its key cannot exhaust them) and
  before the body is decoded or anything is written.
- A real agent never comes near the limits: it heartbeats at the interval the control
  plane hands out, at most once a second while a container starts, and re-polls only
  when a poll answered.
- Memory is bounded: at most `max_keys` workers per kind are remembered, the least
  recently seen forgotten first (forgetting only ever lets a worker call sooner).
"""

from __future__ import annotations

import math
from typing import Literal

from control.api.ratelimit import FailureLimiter, RateLimited

Kind = Literal["heartbeat", "poll"]


BURST = 10
MAX_KEYS = 100_000


class AgentPace:
    """`calls_per_second` is AGENT_CALLS_PER_SECOND: a worker's heartbeats after a burst
    of BURST; its polls may come twice as often. 0 turns the limit off."""

    def __init__(self, calls_per_second: float, max_keys: int = MAX_KEYS) -> None:
        self._limiters = {
            kind: FailureLimiter(
                burst=BURST * share,
                refill_seconds=1 / (calls_per_second * share),
                max_keys=max_keys,
            )
            for kind, share in (("heartbeat", 1), ("poll", 2))
            if calls_per_second > 0
        }

    def admit(self, kind: Kind, worker_id: str, now: float) -> None:
        limiter = self._limiters.get(kind)
        if limiter is None:
            return
        wait = limiter.retry_after(worker_id, now)
        if wait > 0:
            raise RateLimited(
                f"worker {worker_id} sends {kind} requests faster than any agent does",
                retry_after=max(1, math.ceil(wait)),
            )
        limiter.fail(worker_id, now)  # here every call takes a token, not only failures
