"""The aiohttp application factory.

Contract: `create_app(settings)` builds the whole control plane and nothing runs until
the app starts. Every long-lived resource has its own cleanup context, which opens it
and puts it under its key (control/appkeys.py) on start-up and closes it on shutdown;
aiohttp runs them in this order and unwinds them in reverse:
1. the store: SQLite, or PostgreSQL with DATABASE_URL (control/db/backend.py);
2. the provider (metered), then the DNS sync with its DNS provider, then the edge
   firewall's sync (control/edge/firewall_sync.py; off unless EDGE_FIREWALL is on);
3. the start-up checks: the provider's validation (control/capacity/providers/health.py)
   and the DNS provider's verification (control/dns/sync.py) run at once, and only a
   refusal within PROVIDER_STARTUP_WAIT stops start-up; an outage is retried in the
   background while everything else serves (a DNS provider verified late triggers a
   DNS round at once, a provider validated late a firewall round);
4. the Fleet facade (its long-poll board, heartbeat writer and room index, rebuilt
   from the store; its replica-local refresh; on PostgreSQL its wake bus,
   control/api/agent_wakes.py), then the
   autoscaler (and the agent wheel under DIST, with a real provider);
5. the Stripe inbox processor, on every replica (docs/production.md says why);
6. the leadership (control/leadership/): the singletons' lease, then the sweeps;
7. the scheduler's jobs (autoscale, DNS and firewall rounds, Stripe pruning:
   control/singleton_jobs.py), started last.
The singletons (the sweeps, every scheduled and `*-now` job, the autoscaler's backup step)
run only while this replica holds the lease, writes fenced; a follower that leaves a
user pending asks the leader for an autoscaler run now (control/leadership/nudges.py).
On shutdown, long-polls are woken first (`on_shutdown`), then the contexts unwind: the
scheduler stops, the leadership cancels and awaits the singletons' work and releases the
lease, the inbox processor is cancelled and awaited, the heartbeat writer flushes, the
start-up checks still running are cancelled, and the firewall's clients, the DNS
provider, the provider and the store close, in that order. The Fleet's collaborators
that act later (the autoscaler, the DNS round) are reached through the app, and act
only once the scheduler runs, after everything is wired.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import shlex
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from control import singleton_jobs as jobs
from control.api import middleware
from control.api.admin_routes import admin_routes
from control.api.agent_pace import AgentPace
from control.api.agent_routes import agent_routes
from control.api.agent_wakes import start_wake_bus, wake_long_polls
from control.api.backup_routes import backup_routes
from control.api.dashboard import install_dashboard
from control.api.metrics_endpoint import install_metrics
from control.api.origin_tls_routes import origin_tls_context, origin_tls_routes
from control.api.ratelimit import install_auth_guard
from control.api.readiness import install_readiness
from control.api.stripe_webhook import stripe_routes
from control.appkeys import (
    AGENT_PACE,
    DIST,
    DNS_HEALTH,
    DNS_SYNC,
    FIREWALL_SYNC,
    FLEET,
    INBOX,
    LEADERSHIP,
    METRICS,
    PROVIDER,
    PROVIDER_FACTORY,
    PROVIDER_HEALTH,
    SCALER,
    SCHEDULER,
    SETTINGS,
    STORE,
    ProviderFactory,
)
from control.billing.inbox import StripeInbox
from control.capacity.providers import build_provider
from control.capacity.providers.base import Provider, ProviderError, hourly_price_lookup
from control.capacity.providers.health import start_validation
from control.capacity.provisioning import Provisioner
from control.capacity.scaler import Scaler
from control.db.backend import open_store
from control.dns.cloudflare import CloudflareDns
from control.dns.cloudflare_api import CloudflareApi
from control.dns.provider import DnsProvider, NoDns
from control.dns.sync import DnsSync
from control.edge.firewall_sync import build_firewall_sync
from control.fleet import Fleet
from control.health import ProviderHealth
from control.keyring import Keyring
from control.leadership.leadership import Leadership
from control.leadership.observe import install_gauges
from control.metrics import MeteredProvider
from control.portal.checkouts import open_checkouts
from control.portal.install import install_portal
from control.settings import Settings
from control.workers.bootstrap import AgentDist, UserDataRenderer, hetzner_user_data

__all__ = ["ProviderFactory", "build_dns", "create_app", "local_user_data"]
STRIPE_PRUNE_INTERVAL = 3600.0  # processed Stripe events are kept for deduplication


def create_app(
    settings: Settings, provider_factory: ProviderFactory = build_provider
) -> web.Application:
    app = web.Application(
        middlewares=[
            middleware.request_ids,
            middleware.errors,
            middleware.body_limit,
            middleware.admin_auth(settings.admin_token, settings.metrics_token),
        ],
        client_max_size=middleware.MAX_BODY,
    )
    app[SETTINGS] = settings
    app[PROVIDER_FACTORY] = provider_factory
    install_metrics(app, settings)  # logs at start-up who may read /metrics
    app[PROVIDER_HEALTH] = ProviderHealth()
    app[DNS_HEALTH] = ProviderHealth()  # the DNS provider's verification (control/dns/sync.py)
    app[SCHEDULER] = AsyncIOScheduler()  # started by the last context, once all is wired
    app[LEADERSHIP] = Leadership(settings.leader_lease_ttl, holder=_holder(settings))
    install_gauges(app[METRICS].registry, app[LEADERSHIP])
    install_auth_guard(app, settings, lambda: app[STORE], app[METRICS].auth_refused_by)
    app[AGENT_PACE] = AgentPace(settings.agent_calls_per_second)
    app.add_routes(agent_routes)
    app.add_routes(origin_tls_routes)
    app.add_routes(admin_routes)
    app.add_routes(backup_routes)
    app.add_routes(stripe_routes)
    install_dashboard(app)
    install_portal(app)
    install_readiness(app)
    app.cleanup_ctx.extend(
        [
            _store,
            _provider,
            _dns_sync,
            _firewall_sync,
            _startup_checks,
            origin_tls_context,  # the zone's SSL mode and origin pulls, in the background
            _fleet,
            _scaler,
            _stripe_inbox,
            _leadership,
            _scheduled_jobs,
        ]
    )
    app.on_shutdown.append(wake_long_polls)
    return app


# --- one cleanup context per resource, in start-up order ----------------------------
async def _store(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE] = open_store(app[SETTINGS].database_url, app[SETTINGS].database_path)
    await store.open()
    try:
        yield
    finally:
        await store.close()


async def _provider(app: web.Application) -> AsyncIterator[None]:
    provider = MeteredProvider(app[PROVIDER_FACTORY](app[SETTINGS]), app[METRICS])
    app[PROVIDER] = provider
    try:
        yield
    finally:
        await provider.close()


async def _dns_sync(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    dns_sync = DnsSync(settings, app[STORE], build_dns(settings), app[DNS_HEALTH])
    app[DNS_SYNC] = dns_sync
    try:
        yield
    finally:
        async with dns_sync.stopped():  # no round starts while its provider closes
            await dns_sync.provider.close()


async def _firewall_sync(app: web.Application) -> AsyncIterator[None]:
    sync = build_firewall_sync(app[SETTINGS], app[STORE], app[PROVIDER_HEALTH])
    app[FIREWALL_SYNC] = sync
    try:
        yield
    finally:
        await sync.close()


async def _startup_checks(app: web.Application) -> AsyncIterator[None]:
    """The provider's validation and the DNS provider's verification, both started at
    once so that start-up waits for them one wait in all; either goes on in the
    background after an outage, until shutdown cancels it."""
    dns_sync, wait = app[DNS_SYNC], app[SETTINGS].provider_startup_wait
    dns_check = dns_sync.start_verification()
    validation: asyncio.Task[ProviderError | None] | None = None
    try:
        wait_until = asyncio.get_running_loop().time() + wait
        validation = await start_validation(app[PROVIDER], app[PROVIDER_HEALTH], wait)
        await DnsSync.refused_within(dns_check, wait_until - asyncio.get_running_loop().time())
        if not dns_check.done():  # verified late, after an outage: publish at once then
            dns_check.add_done_callback(lambda _: jobs.dns_now(app))
        if not validation.done():  # Hetzner validated late: the firewall's round at once
            validation.add_done_callback(lambda _: jobs.firewall_now(app))
        yield
    finally:
        await _cancelled(validation, dns_check)


async def _fleet(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    fleet = Fleet(
        settings,
        app[STORE],
        Keyring(settings.internal_secret),
        app[METRICS],
        on_pending=lambda: jobs.autoscale_now(app),
        on_change=lambda: jobs.dns_now(app),
        price_of=hourly_price_lookup(app[PROVIDER]),
        volume_price=app[PROVIDER].volume_price,
    )
    await fleet.start()
    app[FLEET] = fleet
    # Every replica's own memory (nonce ledger, live count); the sweep is the leader's.
    local = asyncio.create_task(fleet.run_local(), name="fleet-local-refresh")
    try:
        # On PostgreSQL: other replicas' changes, and their nudges for the leader.
        await start_wake_bus(app, fleet.board, functools.partial(jobs.nudged, app))
        yield
    finally:
        await _cancelled(local)
        await wake_long_polls(app)
        await fleet.heartbeats.close()  # writes the heartbeats still buffered


async def _scaler(app: web.Application) -> AsyncIterator[None]:
    settings, provider = app[SETTINGS], app[PROVIDER]
    provisioner = Provisioner(
        settings,
        app[STORE],
        Keyring(settings.internal_secret),
        provider,
        _user_data(app, settings, provider),
        app[FLEET].board.notify,
        expected=open_checkouts,  # open checkouts count in the warm headroom (issue 15)
        room_index=app[FLEET].room_index,  # its snapshot's active rooms, without a scan
    )
    scaler = Scaler(provisioner, health=app[PROVIDER_HEALTH])
    app[SCALER] = scaler
    try:
        yield
    finally:
        await scaler.stopped()  # waits for a run in progress


async def _stripe_inbox(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    inbox = StripeInbox(
        app[STORE],
        settings.stripe_webhook_secret,
        api_key=settings.stripe_secret_key,
        api_base=settings.stripe_api_base or None,
        livemode=settings.stripe_livemode,
        account_id=settings.stripe_account_id,
    )
    app[INBOX] = inbox
    processor = asyncio.create_task(
        inbox.run(app[FLEET].apply_billing, asyncio.Event()), name="stripe-inbox"
    )
    try:
        yield
    finally:
        await _cancelled(processor)


async def _leadership(app: web.Application) -> AsyncIterator[None]:
    leadership = app[LEADERSHIP]
    leadership.add_loop("liveness-sweeps", app[FLEET].run_sweeps)
    for now in jobs.NOW.values():  # a new leader acts at once
        leadership.on_lead.append(functools.partial(now, app))
    await leadership.start(app[STORE])
    try:
        yield
    finally:
        await leadership.stop()


async def _scheduled_jobs(app: web.Application) -> AsyncIterator[None]:
    settings, scheduler = app[SETTINGS], app[SCHEDULER]
    jobs.every(app, settings.autoscale_interval, "autoscale", app[SCALER].tick, scheduled=True)
    jobs.every(app, settings.dns_reconcile_interval, "dns", app[DNS_SYNC].tick)
    jobs.every(app, settings.firewall_reconcile_interval, "firewall", app[FIREWALL_SYNC].tick)
    # Pruning can wait its first interval: at start-up it would only race shutdown in
    # short-lived processes, and apscheduler reports a cancelled job as an error.
    jobs.every(app, STRIPE_PRUNE_INTERVAL, "stripe-prune", app[INBOX].prune_job, now=False)
    scheduler.start()
    try:
        yield
    finally:
        # Jobs running now are stopped and awaited by the leadership, which unwinds next.
        scheduler.shutdown(wait=False)


async def _cancelled(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancels each background task and waits until it has finished."""
    for task in tasks:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# --- collaborators ----------------------------------------------------------------
def _user_data(app: web.Application, settings: Settings, provider: Provider) -> UserDataRenderer:
    if provider.name == "local":
        return local_user_data(settings)
    dist = AgentDist.find(settings.agent_dist_dir)
    app[DIST] = dist
    return hetzner_user_data(settings, dist)


def local_user_data(settings: Settings) -> UserDataRenderer:
    """A local "server" runs the agent directly: it needs only agent.env's values."""

    def render(server_id: str, token: str) -> str:
        return f"CONTROL_URL={shlex.quote(settings.public_url)}\nBOOTSTRAP_TOKEN={shlex.quote(token)}\n"

    return render


def build_dns(settings: Settings) -> DnsProvider:
    if settings.dns_provider == "cloudflare":
        api = CloudflareApi(
            settings.cloudflare_api_token,
            settings.cloudflare_zone_id,
            api_base=settings.cloudflare_api_base,
        )
        return CloudflareDns(api, settings.base_domain, settings.cluster_name)
    return NoDns()


def _holder(settings: Settings) -> str | None:
    """One holder per SQLite database (its lock file admits one process at a time): a
    restart after a crash renews the live lease at once. Replicas on PostgreSQL share a
    database, so each is its own holder (None: a random id)."""
    if settings.database_url:
        return None
    path = os.path.realpath(settings.database_path).encode()
    return "sqlite-" + hashlib.sha256(path).hexdigest()[:16]
