"""`GET /metrics` in the Prometheus text format (prometheus-client).

Contract: one `CollectorRegistry` per app (no process globals). Counters that only
this process sees (heartbeats, provider and DNS calls) live in `Metrics`; everything
the database knows (servers by status, users by state, pending waits, webhook
outbox, autoscaler decisions) is read at scrape time, so it survives restarts and
never drifts from the truth. Readable without the admin token only from loopback,
or with `Authorization: Bearer <METRICS_TOKEN>`.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from control.errors import Unauthorized
from control.providers.base import (
    CreateRequest,
    Provider,
    ProviderError,
    ProviderServer,
    ServerType,
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
        r = self.registry
        self.heartbeats = Counter(
            "clawfleet_heartbeats_received", "Heartbeats accepted.", registry=r
        )
        self.provider_calls = Counter(
            "clawfleet_provider_calls", "Provider API calls.", ["provider", "call"], registry=r
        )
        self.provider_errors = Counter(
            "clawfleet_provider_errors", "Provider API errors.", ["provider", "kind"], registry=r
        )
        self.rate_limit_remaining = Gauge(
            "clawfleet_provider_rate_limit_remaining",
            "Provider requests left in the window.",
            registry=r,
        )
        self.heartbeat_age = Gauge(
            "clawfleet_heartbeat_age_seconds",
            "Seconds since each worker's last heartbeat.",
            ["server"],
            registry=r,
        )
        self.servers = Gauge("clawfleet_servers", "Servers by status.", ["status"], registry=r)
        self.users = Gauge("clawfleet_users", "Users by state.", ["state"], registry=r)
        self.pending_wait = Gauge(
            "clawfleet_pending_oldest_wait_seconds",
            "How long the oldest pending user has waited.",
            registry=r,
        )
        self.waiters = Gauge(
            "clawfleet_assignment_waiters", "Workers long-polling their assignments.", registry=r
        )
        self.reconcile_errors = Gauge(
            "clawfleet_container_errors",
            "Containers whose last report carries an error.",
            registry=r,
        )
        self.held_back = Gauge(
            "clawfleet_autoscaler_held_back_servers",
            "Servers of demand the caps held back in the last run.",
            registry=r,
        )
        self.dns_rounds = Gauge(
            "clawfleet_dns_rounds", "DNS reconciliation rounds since start.", registry=r
        )
        self.dns_changes = Gauge(
            "clawfleet_dns_changes",
            "DNS records created, updated or deleted since start.",
            registry=r,
        )
        self.dns_errors = Gauge(
            "clawfleet_dns_errors", "DNS calls that failed since start.", registry=r
        )
        self.webhooks = Gauge(
            "clawfleet_webhook_events",
            "Stripe events in the inbox by status.",
            ["status"],
            registry=r,
        )
        self.decisions = {
            kind: Gauge(
                name, f"Autoscaler decisions of kind {kind} (from the event log).", registry=r
            )
            for kind, name in EVENT_COUNTERS.items()
        }

    def render(self) -> bytes:
        return generate_latest(self.registry)


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

    async def validate(self) -> None:
        await self._call("validate", self.inner.validate)

    def pairs(self) -> list[tuple[str, str]]:
        return self.inner.pairs()

    def server_type(self, name: str) -> ServerType:
        return self.inner.server_type(name)

    async def create(self, request: CreateRequest) -> ProviderServer:
        return await self._call("create", lambda: self.inner.create(request))

    async def delete(self, provider_id: str) -> None:
        await self._call("delete", lambda: self.inner.delete(provider_id))

    async def list(self, labels: dict[str, str]) -> list[ProviderServer]:
        return await self._call("list", lambda: self.inner.list(labels))

    async def close(self) -> None:
        await self.inner.close()


def allowed(request: web.Request, metrics_token: str) -> bool:
    if metrics_token:
        presented = request.headers.get("Authorization", "").encode()
        if hmac.compare_digest(presented, f"Bearer {metrics_token}".encode()):
            return True
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


async def refresh(metrics: Metrics, snapshot: dict[str, Any]) -> None:
    """Sets the scrape-time gauges from a database snapshot (see `snapshot`)."""
    now = time.time()
    for status in SERVER_STATUSES:
        metrics.servers.labels(status).set(snapshot["servers"].get(status, 0))
    for state in USER_STATES:
        metrics.users.labels(state).set(snapshot["users"].get(state, 0))
    metrics.heartbeat_age.clear()
    for server_id, last in snapshot["heartbeats"]:
        metrics.heartbeat_age.labels(server_id).set(max(0.0, now - last))
    oldest = snapshot["oldest_pending"]
    metrics.pending_wait.set(now - oldest if oldest else 0)
    metrics.reconcile_errors.set(snapshot["container_errors"])
    for kind, gauge in metrics.decisions.items():
        gauge.set(snapshot["events"].get(kind, 0))
    for status, count in snapshot["webhooks"].items():
        metrics.webhooks.labels(status).set(count)


def check(request: web.Request, metrics_token: str) -> None:
    if not allowed(request, metrics_token):
        raise Unauthorized(
            "metrics are readable from loopback or with Authorization: Bearer <METRICS_TOKEN>"
        )


def response(metrics: Metrics) -> web.Response:
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


METRICS = web.AppKey("metrics", Metrics)
