"""The cloud provider's validation, which keeps its `ProviderHealth` (control/health.py)
up to date.

Contract: the provider's `ProviderHealth` lives under `appkeys.PROVIDER_HEALTH` and is
updated only here. `state` is "validating" until `provider.validate()` has succeeded
(transient failures, 5xx, 429, timeouts, connection errors, are retried in the
background with backoff; `detail` names the last one), "ok" once it has (the autoscaler
may create servers) and "invalid" when the provider definitely refused the
configuration (unknown or deprecated server type, unknown location, refused token).

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

from control.capacity.providers.base import Provider, ProviderError
from control.health import ProviderHealth
from shared.backoff import backoff_delay

log = logging.getLogger(__name__)
VALIDATE_BASE = 2.0  # seconds before the second attempt
VALIDATE_CAP = 60.0  # an outage's end is noticed within a minute


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
        except Exception as exc:
            # Last resort, on purpose: validation runs in the background until it succeeds,
            # so anything unexpected (e.g. a proxy's HTML page where JSON was due) counts as
            # an outage; it is logged as one line below and retried with backoff.
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
