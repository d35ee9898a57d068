"""Readiness: whether this control plane can do its work now, for load balancers,
systemd and monitoring. `/healthz` stays liveness (the process answers HTTP).

Contract: `GET /readyz` (no auth, like /healthz; `install_readiness(app)` adds it)
answers `{"status": "ready" | "degraded" | "not_ready", "checks": {name: {"ok": bool,
"required": bool, "detail": str}}}` with these checks, each asked of its component by
one small function:
- `store` (required): a real write through the store (`Store.probe()`), at most one
  per `PROBE_INTERVAL`: callers in between share the last answer, so that an
  unauthenticated caller cannot turn probes into write load. Not ok while starting.
- `provider`: the provider's validation state (control/capacity/providers/health.py); ok only
  in state "ok".
- `dns`: the DNS provider; ok when none is configured, else when its verification
  state (`appkeys.DNS_HEALTH`) is "ok" and the last reconciliation round failed on
  nothing (`DnsSync.counters.last_error` is None).
- `leader`: who runs the singletons (control/leadership/): always ok (a replica that
  follows serves all the same), its detail names the leader, its epoch and whether it
  is this replica.
`verdict` turns the checks into the answer: 503 "not_ready" when a required check
fails; else 200, "degraded" when an optional one fails. The provider and DNS are
optional because the webhook, the agent protocol and the admin API keep serving
through their outages: a load balancer must not take the control plane away for them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

from aiohttp import web

from control.appkeys import (
    DNS_HEALTH,
    DNS_SYNC,
    FLEET,
    LEADERSHIP,
    PROVIDER_HEALTH,
    SETTINGS,
    STORE_PROBE,
)
from control.db.store import Store, StoreUnavailable

PROBE_INTERVAL = 1.0  # seconds an answer of the store probe is reused
PROBE_TIMEOUT = 10.0  # seconds a probe may wait for the writer (busy_timeout is 5 s)


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str
    required: bool = False


def verdict(checks: Mapping[str, Check]) -> tuple[int, str]:
    if any(c.required and not c.ok for c in checks.values()):
        return 503, "not_ready"
    if all(c.ok for c in checks.values()):
        return 200, "ready"
    return 200, "degraded"


class StoreProbe:
    """Probes a store with a real write, at most once per `interval` seconds."""

    def __init__(
        self, interval: float = PROBE_INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._last: tuple[float, Check] | None = None
        self._lock = asyncio.Lock()  # concurrent callers wait for one probe

    async def check(self, store: Store) -> Check:
        async with self._lock:
            if self._last is not None and self._clock() - self._last[0] < self.interval:
                return self._last[1]
            result = await _probe(store)
            self._last = (self._clock(), result)
            return result


async def _probe(store: Store) -> Check:
    try:
        await asyncio.wait_for(store.probe(), PROBE_TIMEOUT)
    except StoreUnavailable as exc:
        return Check(False, exc.message, required=True)
    except TimeoutError:
        return Check(False, f"no write within {PROBE_TIMEOUT:.0f} s", required=True)
    except RuntimeError as exc:  # closed: the control plane is stopping
        return Check(False, str(exc), required=True)
    return Check(True, "writable", required=True)


async def store_check(app: web.Application) -> Check:
    if FLEET not in app:
        return Check(False, "starting", required=True)
    return await app[STORE_PROBE].check(app[FLEET].store)


def provider_check(app: web.Application) -> Check:
    health = app[PROVIDER_HEALTH]
    return Check(health.usable, f"{health.state}: {health.detail}")


def dns_check(app: web.Application) -> Check:
    if app[SETTINGS].dns_provider == "none":
        return Check(True, "no DNS provider configured")
    health = app[DNS_HEALTH]
    last_error = app[DNS_SYNC].counters.last_error if DNS_SYNC in app else None
    if health.usable and last_error:
        return Check(False, f"last round failed: {last_error}")
    return Check(health.usable, f"{health.state}: {health.detail}")


def leader_check(app: web.Application) -> Check:
    status = app[LEADERSHIP].status()
    if status["leader"] is None:
        return Check(True, f"no leader known yet (this replica: {status['me']})")
    if status["leading"]:
        return Check(True, f"this replica leads: {status['leader']}, epoch {status['epoch']}")
    if status["leader"] == status["me"]:
        return Check(True, f"this replica ({status['me']}) is not renewing its lease")
    return Check(True, f"{status['leader']} leads, epoch {status['epoch']}; this: {status['me']}")


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    checks = {
        "store": await store_check(app),
        "provider": provider_check(app),
        "dns": dns_check(app),
        "leader": leader_check(app),
    }
    status, word = verdict(checks)
    body = {"status": word, "checks": {name: asdict(c) for name, c in checks.items()}}
    return web.json_response(body, status=status)


def install_readiness(app: web.Application) -> None:
    app[STORE_PROBE] = StoreProbe()
    app.router.add_get("/readyz", readyz)
