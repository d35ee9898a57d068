"""`GET /metrics` in the Prometheus text format (prometheus-client).

Contract: one `CollectorRegistry` per app (no process globals). Counters that only
this process sees (heartbeats, provider and DNS calls, refused sign-ins) live in
`Metrics`; everything the database knows (servers by status, users by state, pending
waits, webhook outbox, autoscaler decisions) is read at scrape time, so it survives
restarts and never drifts from the truth.

Who may read it is decided once, at start-up, by `access_mode` (logged in one line):
- "loopback": LISTEN_HOST is loopback only and PUBLIC_URL names no proxy
  (control/api/edge.py), so every caller is on this machine: loopback callers need no
  token (METRICS_TOKEN, when set, is accepted too);
- "token": a proxy or a non-loopback listener may carry the internet to it, so every
  caller, loopback included (a local proxy is loopback), needs
  `Authorization: Bearer <METRICS_TOKEN>`;
- "closed": as "token", but METRICS_TOKEN is not set: nobody may read it (403).
Failed tokens count towards the caller's sign-in limit (control/api/ratelimit.py); the
auth middleware (control/api/middleware.py) applies `check` with that bookkeeping.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from control.api import edge
from control.capacity.providers.base import (
    CreateRequest,
    Provider,
    ProviderError,
    ProviderServer,
    ServerType,
)
from control.errors import Forbidden, Unauthorized
from control.settings import Settings

T = TypeVar("T")
log = logging.getLogger(__name__)
MetricsMode = Literal["loopback", "token", "closed"]
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
        self.provider_state = Gauge(
            "clawfleet_provider_state",
            "1 for the provider's current state (ok, validating, invalid), 0 for the others.",
            ["state"],
            registry=r,
        )
        self.dns_state = Gauge(
            "clawfleet_dns_provider_state",
            "1 for the DNS provider's current state (ok, validating, invalid), 0 for the others.",
            ["state"],
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
        self.auth_refused = Counter(
            "clawfleet_auth_rate_limited",
            "Credential attempts refused because the address failed too often.",
            ["surface"],
            registry=r,
        )
        self.decisions = {
            kind: Gauge(
                name, f"Autoscaler decisions of kind {kind} (from the event log).", registry=r
            )
            for kind, name in EVENT_COUNTERS.items()
        }

    def auth_refused_by(self, surface: str) -> None:
        self.auth_refused.labels(surface).inc()

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

    async def create(self, request: CreateRequest) -> ProviderServer:
        return await self._call("create", lambda: self.inner.create(request))

    async def delete(self, provider_id: str) -> None:
        await self._call("delete", lambda: self.inner.delete(provider_id))

    async def list(self, labels: dict[str, str]) -> list[ProviderServer]:
        return await self._call("list", lambda: self.inner.list(labels))

    async def close(self) -> None:
        await self.inner.close()


def access_mode(listen_host: str, listen_port: int, public_url: str, token: str) -> MetricsMode:
    if edge.loopback_listener(listen_host) and not edge.behind_proxy(public_url, listen_port):
        return "loopback"
    return "token" if token else "closed"


def allowed(mode: MetricsMode, remote: str | None, authorization: str, token: str) -> bool:
    presented = authorization.encode("utf-8", "surrogatepass")  # headers may hold any bytes
    if token and hmac.compare_digest(presented, f"Bearer {token}".encode()):
        return True
    return mode == "loopback" and edge.is_loopback(remote)


def describe(mode: MetricsMode) -> str:
    """The start-up line that says who may read /metrics."""
    return {
        "loopback": "/metrics: open to loopback callers without a token (LISTEN_HOST is "
        "loopback and PUBLIC_URL names no proxy); METRICS_TOKEN works from anywhere if set",
        "token": "/metrics: every caller needs Authorization: Bearer <METRICS_TOKEN> "
        "(a proxy or a non-loopback listener may carry the internet to it)",
        "closed": "/metrics: closed: a proxy or a non-loopback listener may carry the "
        "internet to it and METRICS_TOKEN is not set",
    }[mode]


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
    mode: MetricsMode = request.app.get(METRICS_MODE, "closed")
    authorization = request.headers.get("Authorization", "")
    if allowed(mode, request.remote, authorization, metrics_token):
        return
    if mode == "closed":
        raise Forbidden(
            "/metrics is closed: set METRICS_TOKEN and send Authorization: Bearer <METRICS_TOKEN>",
            code="metrics_closed",
        )
    raise Unauthorized(
        "/metrics needs Authorization: Bearer <METRICS_TOKEN>"
        + (" (or a loopback caller)" if mode == "loopback" else "")
    )


def response(metrics: Metrics) -> web.Response:
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


METRICS = web.AppKey("metrics", Metrics)
METRICS_MODE: web.AppKey[MetricsMode] = web.AppKey("metrics_mode")


def install_metrics(app: web.Application, settings: Settings) -> Metrics:
    """Gives `app` its metrics and access mode, and says the mode once at start-up."""
    mode = access_mode(
        settings.listen_host, settings.listen_port, settings.public_url, settings.metrics_token
    )
    app[METRICS] = Metrics()
    app[METRICS_MODE] = mode

    async def announce(_app: web.Application) -> None:
        log.info("%s", describe(mode))

    app.on_startup.append(announce)
    return app[METRICS]
