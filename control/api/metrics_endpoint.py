"""`GET /metrics` in the Prometheus text format (prometheus-client), and who may read it.

Contract: `install_metrics(app, settings)` gives the app its `Metrics`
(control/metrics.py: one registry per app, no process globals) and its access mode,
and adds the route. A scrape reads what the database knows (metrics_snapshot.py)
and the live state (long-poll waiters, the autoscaler's held-back demand, the provider
and DNS states and the DNS counters) into the gauges, then renders the registry (the
singletons' gauges only on the replica that leads: control/metrics.py).

Who may read it is decided once, at start-up, by `access_mode` (logged in one line):
- "loopback": LISTEN_HOST is loopback only and PUBLIC_URL names no proxy
  (control/api/edge.py), so every caller is on this machine: loopback callers need no
  token (METRICS_TOKEN, when set, is accepted too);
- "token": a proxy or a non-loopback listener may carry the internet to it, so every
  caller, loopback included (a local proxy is loopback), needs
  `Authorization: Bearer <METRICS_TOKEN>`;
- "closed": as "token", but METRICS_TOKEN is not set: nobody may read it (403).
Failed tokens count towards the caller's sign-in limit (control/api/ratelimit.py); the
auth middleware (control/api/middleware.py) applies `check` with that bookkeeping, and
the handler applies it again (a route never relies on a middleware alone).
"""

from __future__ import annotations

import hmac
import logging
from typing import Literal

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from control import metrics
from control.api import edge
from control.api.metrics_snapshot import metrics_snapshot
from control.appkeys import (
    DNS_HEALTH,
    DNS_SYNC,
    FLEET,
    INBOX,
    LEADERSHIP,
    METRICS,
    METRICS_MODE,
    PROVIDER_HEALTH,
    SCALER,
    SETTINGS,
)
from control.db.read_thread import reads_apart
from control.errors import Forbidden, Unauthorized
from control.health import PROVIDER_STATES
from control.settings import Settings

log = logging.getLogger(__name__)
MetricsMode = Literal["loopback", "token", "closed"]
metrics_routes = web.RouteTableDef()


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


def install_metrics(app: web.Application, settings: Settings) -> metrics.Metrics:
    """Gives `app` its metrics, access mode and route, and says the mode once at start-up."""
    mode = access_mode(
        settings.listen_host, settings.listen_port, settings.public_url, settings.metrics_token
    )
    app[METRICS] = metrics.Metrics()
    app[METRICS_MODE] = mode

    async def announce(_app: web.Application) -> None:
        log.info("%s", describe(mode))

    app.on_startup.append(announce)
    app.add_routes(metrics_routes)
    return app[METRICS]


@metrics_routes.get("/metrics")
async def prometheus(request: web.Request) -> web.Response:
    app = request.app
    check(request, app[SETTINGS].metrics_token)
    fleet = app[FLEET]
    m = app[METRICS]
    with reads_apart():  # never behind the sweeps' reads (control/db/read_thread.py)
        snapshot = await metrics_snapshot(fleet.store)
        if INBOX in app:
            snapshot["webhooks"] = await app[INBOX].counts()
    await metrics.refresh(m, snapshot)
    m.waiters.set(fleet.board.waiters())
    if SCALER in app:
        m.held_back.set(app[SCALER].state.held_back)
    for state in PROVIDER_STATES:
        m.provider_state.labels(state).set(1 if app[PROVIDER_HEALTH].state == state else 0)
        m.dns_state.labels(state).set(1 if app[DNS_HEALTH].state == state else 0)
    if DNS_SYNC in app:
        counters = app[DNS_SYNC].counters
        m.dns_rounds.set(counters.rounds)
        m.dns_changes.set(counters.changes)
        m.dns_errors.set(counters.errors)
    leads = app[LEADERSHIP].term is not None  # as `clawfleet_leader` says
    return web.Response(body=m.render(leads), headers={"Content-Type": CONTENT_TYPE_LATEST})
