"""Keeps `<subdomain>.<BASE_DOMAIN>` pointing at the worker each user runs on.

Contract: `desired()` derives the wanted records from the store alone: every placed
user's name → its worker's public IPv4; during a make-before-break move the record
keeps pointing at the old worker until the move completes. `run()` is one
reconciliation round (control/dns.py): it repairs drift both ways (a record deleted
or changed by hand comes back, a record of ours that no user owns goes), records
what it changed in the event log, and never raises for a DNS failure: the next
round retries. It runs on a schedule and shortly after any assignment change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiosqlite

from control import events
from control.dns import DnsError, DnsProvider, check_ip, fqdn, reconcile_dns
from control.settings import Settings
from control.store import Store

log = logging.getLogger(__name__)


@dataclass
class DnsCounters:
    rounds: int = 0
    changes: int = 0
    errors: int = 0
    last_error: str | None = None
    failed_names: dict[str, str] = field(default_factory=dict)


class DnsSync:
    def __init__(self, settings: Settings, store: Store, provider: DnsProvider) -> None:
        self.settings = settings
        self.store = store
        self.provider = provider
        self.counters = DnsCounters()
        self._lock = asyncio.Lock()

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

    async def run(self) -> None:
        if self.provider.name == "none":
            return  # local mode: nothing to publish, nothing to record
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
