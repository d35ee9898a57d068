"""Keeps `<subdomain>.<BASE_DOMAIN>` pointing at the worker each user runs on.

Contract: `desired()` derives the wanted records from the store alone: every placed
user's name → its worker's public IPv4; during a make-before-break move the record
keeps pointing at the old worker until the move completes. `run()` is one
reconciliation round (control/dns/provider.py): it repairs drift both ways (a record deleted
or changed by hand comes back, a record of ours that no user owns goes), records
what it changed in the event log, and never raises for a DNS failure: the next
round retries. It runs on a schedule and shortly after any assignment change.
`counters.last_error` is the last round's failure (None after a clean round).

The DNS provider is checked before any round (`health`, a ProviderHealth shared with
/healthz, /readyz, /v1/servers and /metrics under `appkeys.DNS_HEALTH`): rounds do
nothing until the state is "ok". `start_verification()` starts `verify_until_ok` in
the background: a definite refusal (`control.dns.provider.is_refusal`: token refused, no
permission, unknown zone, BASE_DOMAIN outside it) sets "invalid" and ends it; an
outage (no answer, 408, 429, 5xx) keeps "validating" and retries after `verify_delay`
(Retry-After, else backoff with jitter), for as long as it takes. `refused_within`
lets start-up fail on a refusal that comes within its wait, as for Hetzner
(control/capacity/providers/health.py); `ProviderHealth` is in control/health.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiosqlite

from control.db import events
from control.db.store import Store
from control.dns.provider import (
    DnsError,
    DnsProvider,
    check_ip,
    fqdn,
    is_refusal,
    reconcile_dns,
    verify_delay,
)
from control.health import ProviderHealth
from control.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class DnsCounters:
    rounds: int = 0
    changes: int = 0
    errors: int = 0
    last_error: str | None = None
    failed_names: dict[str, str] = field(default_factory=dict)


class DnsSync:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        provider: DnsProvider,
        health: ProviderHealth | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.store = store
        self.provider = provider
        self.health = health if health is not None else ProviderHealth()
        self.counters = DnsCounters()
        self._lock = asyncio.Lock()
        self._sleep = sleep
        self._rand = rand

    async def desired(self) -> dict[str, str]:
        rows = await self.store.fetch_all(
            "SELECT u.subdomain, COALESCE(old.public_ip, s.public_ip) AS ip FROM users u "
            "JOIN servers s ON s.id = u.server_id LEFT JOIN servers old ON old.id = u.moving_from "
            "WHERE u.state IN ('provisioning', 'running')"
        )
        wanted: dict[str, str] = {}
        for row in rows:
            try:
                wanted[fqdn(row["subdomain"], self.settings.base_domain)] = check_ip(
                    row["ip"] or ""
                )
            except ValueError:
                continue  # no public IPv4 yet (a server still booting, or IPv6-only)
        return wanted

    @contextlib.asynccontextmanager
    async def stopped(self) -> AsyncIterator[None]:
        """Holds off new rounds while the caller closes the provider."""
        async with self._lock:
            yield

    async def tick(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self.run()

    async def verify_until_ok(self) -> DnsError | None:
        """Verifies the provider until it succeeds ("ok") or refuses ("invalid"; the
        refusal is returned, not raised, so that a background task ends cleanly)."""
        health = self.health
        while True:
            health.attempts += 1
            try:
                await self.provider.verify()
            except DnsError as exc:
                if is_refusal(exc):
                    health.update("invalid", exc.message)
                    self.counters.last_error = exc.message
                    log.error("dns: %s refused the configuration: %s", self.provider.name, exc)
                    return exc
                failure, said = exc, exc.message
            except Exception as exc:
                # Last resort, on purpose: verification runs in the background until it
                # succeeds, so anything unexpected (e.g. a proxy's HTML page where JSON was
                # due) counts as an outage; it is logged as one line below and retried.
                failure, said = None, f"{type(exc).__name__}: {exc}"
            else:
                health.update("ok", "verified" if self.provider.name != "none" else "no DNS")
                self.counters.last_error = None
                return None
            delay = verify_delay(health.attempts, failure, self._rand())
            health.update("validating", said, time.time() + delay)
            self.counters.last_error = f"not verified yet: {said}"
            log.warning(
                "dns: %s not verified yet: %s; attempt %d, next in %.1f s",
                self.provider.name,
                said,
                health.attempts,
                delay,
            )
            await self._sleep(delay)

    def start_verification(self) -> asyncio.Task[DnsError | None]:
        """`verify_until_ok` in the background (cancel the task at shutdown)."""
        return asyncio.create_task(self.verify_until_ok(), name="dns-verification")

    @staticmethod
    async def refused_within(task: asyncio.Task[DnsError | None], wait: float) -> None:
        """Waits up to `wait` s for `task`: a refusal by then is raised; otherwise the
        task goes on in the background."""
        done, _ = await asyncio.wait({task}, timeout=max(0.0, wait))
        refusal = task.result() if task in done else None
        if refusal is not None:
            raise refusal

    async def run(self) -> None:
        if self.provider.name == "none":
            return  # local mode: nothing to publish, nothing to record
        if not self.health.usable:
            return  # not verified yet (or refused): nothing is written meanwhile
        async with self._lock:
            self.counters.rounds += 1
            try:
                report = await reconcile_dns(
                    self.provider, await self.desired(), base_domain=self.settings.base_domain
                )
            except DnsError as exc:
                self.counters.errors += 1
                self.counters.last_error = exc.message
                log.warning("dns: reconciliation failed, retrying next round: %s", exc.message)
                return
            self.counters.changes += len(report.upserted) + len(report.deleted)
            self.counters.errors += len(report.failed)
            self.counters.failed_names = dict(report.failed)
            self.counters.last_error = _summary(report.failed)
            if report.upserted or report.deleted or report.failed:
                await self._record(report.upserted, report.deleted, report.failed)

    async def _record(
        self, upserted: list[str], deleted: list[str], failed: dict[str, str]
    ) -> None:
        async def apply(conn: aiosqlite.Connection) -> None:
            for name in upserted:
                await events.record(conn, "dns_upserted", f"{name} points at its worker")
            for name in deleted:
                await events.record(conn, "dns_deleted", f"{name} removed (no user runs there)")
            for name, message in failed.items():
                await events.record(conn, "dns_failed", f"{name}: {message}")

        await self.store.write(apply)


def _summary(failed: dict[str, str]) -> str | None:
    """One line for the names a round could not change, or None after a clean round."""
    if not failed:
        return None
    name = min(failed)
    more = f" and {len(failed) - 1} more" if len(failed) > 1 else ""
    return f"{name}: {failed[name]}{more}"
