"""The control plane's Prometheus metrics: the counters and gauges, and the provider
wrapper that counts every call. A foundation for the domain (Fleet counts heartbeats,
the app meters the provider); who may read them over HTTP, and the `/metrics` route,
live in control/api/metrics_endpoint.py.

Contract: one `CollectorRegistry` per `Metrics` (no process globals). Counters that
only this process sees (heartbeats, provider and DNS calls, refused sign-ins) are
counted as they happen; everything the database knows (servers by status, users by
state, pending waits, webhook outbox, autoscaler decisions, the workers' heartbeat
ages) is set by `refresh` from a snapshot read at scrape time, so it survives restarts
and never drifts from the truth. Every series is an aggregate: none is labelled by
server or user, so a scrape costs the same at 10 or 10,000 workers (issue 16). What
only the singletons' runs set (the autoscaler's held-back demand, the DNS rounds'
counts, the provider's rate limit as its calls last saw it) lives in a registry of its
own, `singletons`, that `render` includes only on the replica that leads: a follower
has no such series, rather than zeros that read as the fleet's.
`MeteredProvider` is its provider in every other respect.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from control.capacity.providers.base import (
    CreateRequest,
    Provider,
    ProviderError,
    ProviderServer,
    ProviderVolume,
    ServerType,
    VolumePrice,
)

T = TypeVar("T")
SERVER_STATUSES = ("provisioning", "active", "unhealthy", "dead", "deleting", "deleted")
USER_STATES = ("pending", "provisioning", "running", "suspended", "deprovisioned")
EVENT_COUNTERS = {  # event kind in the log -> metric name
    "scale_up": "clawfleet_scale_up_total",
    "scale_down": "clawfleet_scale_down_total",
    "scale_capped": "clawfleet_scale_capped_total",
    "create_failed": "clawfleet_server_create_failures_total",
    "provision_timeout": "clawfleet_provision_timeouts_total",
    "orphan_deleted": "clawfleet_orphans_deleted_total",
}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.singletons = CollectorRegistry(auto_describe=True)
        self._process_counters()
        self._provider_gauges()
        self._fleet_gauges()
        self._dns_gauges()
        self.webhooks = self._gauge(
            "clawfleet_webhook_events", "Stripe events in the inbox by status.", ["status"]
        )
        self.decisions = {
            kind: self._gauge(name, f"Autoscaler decisions of kind {kind} (from the event log).")
            for kind, name in EVENT_COUNTERS.items()
        }

    def _gauge(
        self, name: str, doc: str, labels: list[str] | None = None, leader_only: bool = False
    ) -> Gauge:
        registry = self.singletons if leader_only else self.registry
        return Gauge(name, doc, labels or [], registry=registry)

    def _counter(self, name: str, doc: str, labels: list[str] | None = None) -> Counter:
        return Counter(name, doc, labels or [], registry=self.registry)

    def _process_counters(self) -> None:
        self.heartbeats = self._counter("clawfleet_heartbeats_received", "Heartbeats accepted.")
        self.provider_calls = self._counter(
            "clawfleet_provider_calls", "Provider API calls.", ["provider", "call"]
        )
        self.provider_errors = self._counter(
            "clawfleet_provider_errors", "Provider API errors.", ["provider", "kind"]
        )
        self.auth_refused = self._counter(
            "clawfleet_auth_rate_limited",
            "Credential attempts refused because the address failed too often.",
            ["surface"],
        )

    def _provider_gauges(self) -> None:
        self.rate_limit_remaining = self._gauge(
            "clawfleet_provider_rate_limit_remaining",
            "Provider requests left in the window.",
            leader_only=True,
        )
        self.provider_state = self._gauge(
            "clawfleet_provider_state",
            "1 for the provider's current state (ok, validating, invalid), 0 for the others.",
            ["state"],
        )
        self.held_back = self._gauge(
            "clawfleet_autoscaler_held_back_servers",
            "Servers of demand the caps held back in the last run.",
            leader_only=True,
        )

    def _fleet_gauges(self) -> None:
        # Aggregates only: a series per server is 10k series per scrape at 10k workers.
        self.heartbeat_age = HeartbeatAges()
        self.registry.register(self.heartbeat_age)
        self.heartbeat_oldest = self._gauge(
            "clawfleet_heartbeat_oldest_age_seconds",
            "Seconds since the last heartbeat of the live worker heard from least recently.",
        )
        self.servers = self._gauge("clawfleet_servers", "Servers by status.", ["status"])
        self.users = self._gauge("clawfleet_users", "Users by state.", ["state"])
        self.pending_wait = self._gauge(
            "clawfleet_pending_oldest_wait_seconds", "How long the oldest pending user has waited."
        )
        self.waiters = self._gauge(
            "clawfleet_assignment_waiters", "Workers long-polling their assignments."
        )
        self.reconcile_errors = self._gauge(
            "clawfleet_container_errors", "Containers whose last report carries an error."
        )

    def _dns_gauges(self) -> None:
        self.dns_state = self._gauge(
            "clawfleet_dns_provider_state",
            "1 for the DNS provider's current state (ok, validating, invalid), 0 for the others.",
            ["state"],
        )
        self.dns_rounds = self._gauge(
            "clawfleet_dns_rounds", "DNS reconciliation rounds since start.", leader_only=True
        )
        self.dns_changes = self._gauge(
            "clawfleet_dns_changes",
            "DNS records created, updated or deleted since start.",
            leader_only=True,
        )
        self.dns_errors = self._gauge(
            "clawfleet_dns_errors", "DNS calls that failed since start.", leader_only=True
        )

    def auth_refused_by(self, surface: str) -> None:
        self.auth_refused.labels(surface).inc()

    def render(self, leads: bool = True) -> bytes:
        """The registry, and the singletons' gauges when this replica `leads`."""
        own = generate_latest(self.registry)
        return own + generate_latest(self.singletons) if leads else own


class HeartbeatAges(Collector):
    """`clawfleet_heartbeat_age_seconds`, a histogram of the live (active, unhealthy)
    workers' heartbeat ages at scrape time, set from the snapshot's aggregate."""

    NAME = "clawfleet_heartbeat_age_seconds"
    DOC = "Seconds since each live worker's last heartbeat, as a histogram over the workers."

    def __init__(self) -> None:
        self.ages: dict[str, Any] = {"buckets": [], "count": 0, "sum": 0.0}

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.NAME, self.DOC)]

    def collect(self) -> list[Metric]:
        ages = self.ages
        buckets = [(str(float(le)), n) for le, n in ages["buckets"]]
        buckets.append(("+Inf", ages["count"]))
        return [HistogramMetricFamily(self.NAME, self.DOC, buckets, ages["sum"])]


class MeteredProvider:
    """Counts every provider call and error; otherwise the provider itself."""

    def __init__(self, inner: Provider, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics
        self.name = inner.name
        self.bills_hourly = inner.bills_hourly
        self.max_servers = inner.max_servers

    async def _call(self, call: str, fn: Callable[[], Awaitable[T]]) -> T:
        self.metrics.provider_calls.labels(self.name, call).inc()
        try:
            return await fn()
        except ProviderError as exc:
            self.metrics.provider_errors.labels(self.name, exc.kind).inc()
            raise
        finally:
            remaining = getattr(self.inner, "rate_limit_remaining", None)
            if isinstance(remaining, int):
                self.metrics.rate_limit_remaining.set(remaining)

    @property
    def rate_limit_remaining(self) -> int | None:
        remaining = getattr(self.inner, "rate_limit_remaining", None)
        return remaining if isinstance(remaining, int) else None

    async def validate(self) -> None:
        await self._call("validate", self.inner.validate)

    def pairs(self) -> list[tuple[str, str]]:
        return self.inner.pairs()

    def server_type(self, name: str) -> ServerType:
        return self.inner.server_type(name)

    def volume_price(self) -> VolumePrice | None:
        return self.inner.volume_price()

    async def create(self, request: CreateRequest) -> ProviderServer:
        return await self._call("create", lambda: self.inner.create(request))

    async def delete(self, provider_id: str) -> None:
        await self._call("delete", lambda: self.inner.delete(provider_id))

    async def list(self, labels: dict[str, str]) -> list[ProviderServer]:
        return await self._call("list", lambda: self.inner.list(labels))

    async def close(self) -> None:
        await self.inner.close()

    async def create_volume(
        self, name: str, size_gb: int, location: str, labels: dict[str, str]
    ) -> ProviderVolume:
        make = self.inner.create_volume
        return await self._call("create_volume", lambda: make(name, size_gb, location, labels))

    async def attach(self, volume: ProviderVolume, server_provider_id: str) -> None:
        await self._call("attach", lambda: self.inner.attach(volume, server_provider_id))

    async def detach(self, volume: ProviderVolume) -> None:
        await self._call("detach", lambda: self.inner.detach(volume))

    async def delete_volume(self, volume: ProviderVolume) -> None:
        await self._call("delete_volume", lambda: self.inner.delete_volume(volume))

    async def resize_volume(self, volume: ProviderVolume, size_gb: int) -> None:
        await self._call("resize_volume", lambda: self.inner.resize_volume(volume, size_gb))

    async def list_volumes(self, labels: dict[str, str]) -> builtins.list[ProviderVolume]:
        return await self._call("list_volumes", lambda: self.inner.list_volumes(labels))


async def refresh(metrics: Metrics, snapshot: dict[str, Any]) -> None:
    """Sets the scrape-time gauges from a database snapshot (control/api/metrics_snapshot.py)."""
    now = time.time()
    for status in SERVER_STATUSES:
        metrics.servers.labels(status).set(snapshot["servers"].get(status, 0))
    for state in USER_STATES:
        metrics.users.labels(state).set(snapshot["users"].get(state, 0))
    metrics.heartbeat_age.ages = snapshot["heartbeat_ages"]
    metrics.heartbeat_oldest.set(snapshot["heartbeat_ages"]["oldest"])
    oldest = snapshot["oldest_pending"]
    metrics.pending_wait.set(now - oldest if oldest else 0)
    metrics.reconcile_errors.set(snapshot["container_errors"])
    for kind, gauge in metrics.decisions.items():
        gauge.set(snapshot["events"].get(kind, 0))
    for status, count in snapshot["webhooks"].items():
        metrics.webhooks.labels(status).set(count)
