"""Keeps the cluster's Hetzner Cloud Firewall as control/edge/firewall_rules.py says.

Contract: `FirewallSync.run()` is one round, on a schedule (FIREWALL_RECONCILE_INTERVAL)
like the DNS rounds, and does nothing while the firewall is off (EDGE_FIREWALL, the
local provider) or the Hetzner provider is not validated ("ok" in `health`). A round:
1. refreshes Cloudflare's ranges when `refresh_due` (daily): a good read is saved
   (`RangesFile`, so a restart during an outage keeps it) and, when they changed,
   recorded as `cloudflare_ips_changed`; a failed read keeps the last good ranges and
   records `cloudflare_ips_stale` once per run of failures (`cloudflare_ips_recovered`
   when a read succeeds again), retrying every round meanwhile;
2. with no ranges known at all (first start during an outage) changes nothing: an
   empty or guessed list would shut users out or let everyone in;
3. finds the firewalls labelled `managed-by=clawfleet,clawfleet-cluster=<CLUSTER_NAME>`
   and applies `plan_firewall`: creates the firewall (`firewall_created`, or
   `firewall_repaired` when one we had is gone: deleted by hand), sets its rules back
   (`firewall_repaired` when they were edited by hand, `firewall_updated` when
   Cloudflare's ranges or the settings changed), applies it again to the servers'
   label selector (`firewall_repaired`: detached) and deletes duplicates
   (`firewall_repaired`). A failure ends the round (`counters.last_error`, logged, and
   `firewall_failed` recorded when the message differs from the last one); the next
   round retries. It never raises.
`status()` says what the server pages show: "off", "pending" (no clean round yet),
"ok" or "failing", with the last error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from control.capacity.providers.base import ProviderError
from control.db import events
from control.db.store import Store
from control.dns.cloudflare_api import CloudflareApi
from control.dns.provider import DnsError
from control.edge.cloudflare_ips import Known, RangesFile, fetch_ranges, refresh_due
from control.edge.firewall_hcloud import HetznerFirewalls
from control.edge.firewall_rules import (
    FirewallPlan,
    Found,
    Rule,
    desired_rules,
    plan_firewall,
    same_rules,
    selector_of,
)
from control.health import ProviderHealth
from control.settings import Settings

log = logging.getLogger(__name__)

Event = tuple[str, str]  # (kind, message)


@dataclass(frozen=True)
class FirewallConfig:
    cluster: str
    http: bool = False  # port 80 too (ACME HTTP-01 through Cloudflare)
    ssh_cidrs: tuple[str, ...] = ()  # break-glass SSH

    @property
    def labels(self) -> dict[str, str]:
        return {"managed-by": "clawfleet", "clawfleet-cluster": self.cluster}

    @property
    def name(self) -> str:
        return f"clawfleet-{self.cluster}"


@dataclass
class FirewallCounters:
    rounds: int = 0
    changes: int = 0
    errors: int = 0
    clean_rounds: int = 0
    last_error: str | None = None
    firewall_id: int | None = None


class FirewallSync:
    def __init__(
        self,
        config: FirewallConfig,
        store: Store,
        firewalls: HetznerFirewalls | None,
        cloudflare: CloudflareApi | None,
        ranges_file: RangesFile,
        health: ProviderHealth,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.firewalls = firewalls  # None: the firewall is off
        self.cloudflare = cloudflare
        self.ranges_file = ranges_file
        self.health = health
        self.counters = FirewallCounters()
        self.known: Known | None = ranges_file.load() if firewalls is not None else None
        self._clock = clock
        self._lock = asyncio.Lock()
        self._ranges_failing = False
        self._applied: tuple[Rule, ...] | None = None  # the rules we last set or saw set

    @property
    def enabled(self) -> bool:
        return self.firewalls is not None

    def status(self) -> dict[str, object]:
        if not self.enabled:
            return {"state": "off", "detail": "EDGE_FIREWALL is off"}
        if self.counters.last_error is not None:
            return {"state": "failing", "detail": self.counters.last_error}
        if not self.counters.clean_rounds:
            return {"state": "pending", "detail": "no firewall round has completed yet"}
        return {"state": "ok", "detail": f"firewall {self.counters.firewall_id} applied"}

    @contextlib.asynccontextmanager
    async def stopped(self) -> AsyncIterator[None]:
        """Waits for a round in progress and holds off new ones meanwhile."""
        async with self._lock:
            yield

    async def close(self) -> None:
        async with self.stopped():  # no round starts while the clients close
            if self.firewalls is not None:
                await self.firewalls.close()
            if self.cloudflare is not None:
                await self.cloudflare.close()

    async def tick(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self.run()

    async def run(self) -> None:
        if self.firewalls is None or not self.health.usable:
            return
        async with self._lock:
            self.counters.rounds += 1
            notes: list[Event] = []
            await self._refresh(notes)
            try:
                if self.known is None:
                    raise DnsError("no Cloudflare IP ranges known yet: the firewall is unchanged")
                await self._reconcile(self.firewalls, self.known, notes)
            except (ProviderError, DnsError) as exc:
                self._failed(exc.message, notes)
            else:
                self.counters.last_error = None
                self.counters.clean_rounds += 1
            if notes:
                await self._record(notes)

    async def _refresh(self, notes: list[Event]) -> None:
        now = self._clock()
        if self.cloudflare is None or not refresh_due(self.known, now):
            return
        try:
            fresh = await fetch_ranges(self.cloudflare, now)
            await asyncio.to_thread(self.ranges_file.save, fresh)
        except (DnsError, OSError) as exc:
            log.warning("edge: Cloudflare's IP ranges not refreshed: %s", exc)
            if not self._ranges_failing:
                since = "none known yet" if self.known is None else "keeping the last good list"
                notes.append(("cloudflare_ips_stale", f"refresh failed ({exc}); {since}"))
            self._ranges_failing = True
            return
        if self._ranges_failing:
            notes.append(("cloudflare_ips_recovered", "Cloudflare's IP ranges read again"))
        elif self.known is not None and self.known.ranges != fresh.ranges:
            notes.append(("cloudflare_ips_changed", _ranges_text(fresh)))
        self._ranges_failing = False
        self.known = fresh

    async def _reconcile(self, api: HetznerFirewalls, known: Known, notes: list[Event]) -> None:
        config = self.config
        desired = desired_rules(known.ranges, http=config.http, ssh_cidrs=config.ssh_cidrs)
        selector = selector_of(config.labels)
        found = await api.find(selector)
        plan = plan_firewall(desired, selector, found)
        if plan.create:
            firewall_id = await api.create(config.name, config.labels, desired, selector)
            gone = self.counters.firewall_id is not None
            notes.append(
                ("firewall_repaired" if gone else "firewall_created", _created(firewall_id, gone))
            )
            self.counters.firewall_id = firewall_id
        else:
            self.counters.firewall_id = plan.keep
            await self._repair(api, plan, found, desired, selector, notes)
        self._applied = desired
        self.counters.changes += _changes(plan)

    async def _repair(
        self,
        api: HetznerFirewalls,
        plan: FirewallPlan,
        found: Sequence[Found],
        desired: tuple[Rule, ...],
        selector: str,
        notes: list[Event],
    ) -> None:
        keep = plan.keep
        assert keep is not None  # not a create
        for extra in plan.delete:
            await api.delete(extra)
            notes.append(("firewall_repaired", f"deleted firewall {extra}, a duplicate of {keep}"))
        if plan.set_rules:
            await api.set_rules(keep, desired)
            current = next(f for f in found if f.id == keep).rules
            by_hand = None if self._applied is None else not same_rules(self._applied, current)
            notes.append(_rules_note(keep, by_hand, desired))
        if plan.apply:
            await api.apply(keep, selector)
            notes.append(
                ("firewall_repaired", f"firewall {keep} was detached: applied again to {selector}")
            )

    def _failed(self, message: str, notes: list[Event]) -> None:
        self.counters.errors += 1
        if message != self.counters.last_error:
            notes.append(("firewall_failed", message))
        self.counters.last_error = message
        log.warning("edge: firewall round failed, retrying next round: %s", message)

    async def _record(self, notes: list[Event]) -> None:
        async def apply(conn: aiosqlite.Connection) -> None:
            for kind, message in notes:
                await events.record(conn, kind, message)

        for kind, message in notes:
            log.info("edge: %s: %s", kind, message)
        await self.store.write(apply)


def _changes(plan: FirewallPlan) -> int:
    return int(plan.create) + int(plan.set_rules) + int(plan.apply) + len(plan.delete)


def _created(firewall_id: int, gone: bool) -> str:
    if gone:
        return f"our firewall was gone (deleted by hand?): created it again as {firewall_id}"
    return f"created firewall {firewall_id}: HTTPS from Cloudflare only, nothing else inbound"


def _rules_note(firewall_id: int, by_hand: bool | None, desired: Sequence[Rule]) -> Event:
    """`by_hand`: the rules differed from what we last set (None: nothing set since start)."""
    ports = ", ".join(sorted({str(r.port) for r in desired}))
    if by_hand is False:
        return ("firewall_updated", f"rules of firewall {firewall_id} updated (ports {ports})")
    said = "were changed by hand" if by_hand else "differed (edited by hand, or new ranges)"
    return ("firewall_repaired", f"rules of firewall {firewall_id} {said}: set (ports {ports})")


def _ranges_text(known: Known) -> str:
    return (
        f"Cloudflare's ranges changed: {len(known.ranges.ipv4)} IPv4 and "
        f"{len(known.ranges.ipv6)} IPv6 blocks (etag {known.etag or 'none'})"
    )


def build_firewall_sync(
    settings: Settings,
    store: Store,
    health: ProviderHealth,
    *,
    clock: Callable[[], float] = time.time,
) -> FirewallSync:
    """The sync for these settings: off (no clients) unless `firewall_on`; the last good
    ranges live next to the database (cloudflare-ips.json)."""
    ranges_file = RangesFile(Path(settings.database_path).parent / "cloudflare-ips.json")
    config = FirewallConfig(
        cluster=settings.cluster_name,
        http=bool(settings.acme_email),
        ssh_cidrs=settings.break_glass_ssh_cidrs if settings.break_glass_ssh_key else (),
    )
    if not settings.firewall_on(settings.provider, settings.dns_provider):
        return FirewallSync(config, store, None, None, ranges_file, health, clock=clock)
    firewalls = HetznerFirewalls(
        settings.hetzner_api_token,
        settings.hetzner_api_endpoint,
        timeout=settings.hetzner_api_timeout,
    )
    cloudflare = CloudflareApi(
        settings.cloudflare_api_token,
        settings.cloudflare_zone_id,
        api_base=settings.cloudflare_api_base,
    )
    return FirewallSync(config, store, firewalls, cloudflare, ranges_file, health, clock=clock)
