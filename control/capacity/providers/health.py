"""Whether the provider can be used right now: the outcome of its validation.

Contract: one `ProviderHealth` per app, under `appkeys.PROVIDER_HEALTH`, created with
the app (so readers never miss it) and updated only by the app's provider validation
(control/app.py). `state` is
- "validating" until `provider.validate()` has succeeded: the first attempt, and then
  transient failures (5xx, 429, timeouts, connection errors) retried in the background
  with backoff; `detail` names the last failure;
- "ok" once it has succeeded: the autoscaler may create servers;
- "invalid" when the provider definitely refused the configuration (unknown or
  deprecated server type, unknown location, refused token): an operator must act.
/healthz, /readyz, the dashboard's data and /metrics read it; only "ok" is usable.

`start_validation(provider, health, wait)` is what start-up calls: a refusal within
`wait` seconds (PROVIDER_STARTUP_WAIT) is raised, so start-up fails with exit 2; any
other failure, or no answer yet, leaves validation running in the background
(`validate_until_ok`), retried after `retry_delay` (the rate-limit wait for a 429,
capped exponential backoff with jitter otherwise), while the control plane serves.
A refusal that comes later sets "invalid" and stops retrying (the configuration must
change, which takes a restart); the control plane keeps serving everything else.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Literal

from control.capacity.providers.base import Provider, ProviderError
from shared.backoff import backoff_delay

log = logging.getLogger(__name__)
VALIDATE_BASE = 2.0  # seconds before the second attempt
VALIDATE_CAP = 60.0  # an outage's end is noticed within a minute

ProviderState = Literal["ok", "validating", "invalid"]
PROVIDER_STATES: tuple[ProviderState, ...] = ("ok", "validating", "invalid")


@dataclass
class ProviderHealth:
    state: ProviderState = "validating"
    detail: str = "not validated yet"
    attempts: int = 0  # validation attempts so far
    since: float = field(default_factory=time.time)  # when `state` last changed
    next_attempt_at: float | None = None  # epoch seconds of the next validation attempt

    @property
    def usable(self) -> bool:
        return self.state == "ok"

    def update(
        self, state: ProviderState, detail: str, next_attempt_at: float | None = None
    ) -> None:
        if state != self.state:
            self.since = time.time()
        self.state = state
        self.detail = detail
        self.next_attempt_at = next_attempt_at

    def as_json(self) -> dict[str, object]:
        return {
            "state": self.state,
            "detail": self.detail,
            "attempts": self.attempts,
            "since": self.since,
            "next_attempt_at": self.next_attempt_at,
        }


def is_refusal(exc: ProviderError) -> bool:
    """A definite answer that the configuration is wrong (not an outage)."""
    return exc.kind == "invalid"


def retry_delay(attempt: int, exc: ProviderError | None, rand: float) -> float:
    """Seconds before validation attempt `attempt` + 1 after a non-refusal failure."""
    if exc is not None and exc.kind == "rate_limited" and exc.retry_after is not None:
        return exc.retry_after
    return backoff_delay(attempt - 1, base=VALIDATE_BASE, cap=VALIDATE_CAP, rand=rand)


async def validate_until_ok(provider: Provider, health: ProviderHealth) -> ProviderError | None:
    """Validates until it succeeds (state "ok") or is refused ("invalid"; the refusal is
    returned, not raised, so that a background task ends cleanly)."""
    while True:
        health.attempts += 1
        try:
            await provider.validate()
        except ProviderError as exc:
            if is_refusal(exc):
                health.update("invalid", str(exc))
                log.error("provider %s refused the configuration: %s", provider.name, exc)
                return exc
            failure, said = exc, f"{exc} [{exc.kind}]"
        except Exception as exc:  # e.g. a proxy's HTML page where JSON was due: an outage
            failure, said = None, f"{type(exc).__name__}: {exc}"
        else:
            health.update("ok", "validated")
            return None
        delay = retry_delay(health.attempts, failure, random.random())
        health.update("validating", said, time.time() + delay)
        log.warning(
            "provider %s not validated yet: %s; attempt %d, next in %.1f s",
            provider.name,
            said,
            health.attempts,
            delay,
        )
        await asyncio.sleep(delay)


async def start_validation(
    provider: Provider, health: ProviderHealth, wait: float
) -> asyncio.Task[ProviderError | None]:
    """Starts `validate_until_ok` and waits up to `wait` s for it: a refusal by then is
    raised; otherwise the returned task goes on in the background (cancel it at shutdown)."""
    task = asyncio.create_task(validate_until_ok(provider, health), name="provider-validation")
    done, _ = await asyncio.wait({task}, timeout=wait)
    refusal = task.result() if task in done else None
    if refusal is not None:
        raise refusal
    return task
