"""The aiohttp application factory.

Contract: `create_app(settings)` builds the whole control plane and nothing runs
until the app starts. One cleanup context owns every long-lived resource: it opens
the store, starts validating the provider (control/capacity/providers/health.py) and verifying
the DNS provider (control/dns/sync.py) at once (only a refusal within
PROVIDER_STARTUP_WAIT stops start-up; an outage is retried in the background while
everything else serves), starts the liveness loop and the autoscaler's
scheduler, and on shutdown stops the scheduler and waits for a run in progress,
wakes long-polls, cancels and awaits the loops, closes the provider and then the
store, in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from control import logs
from control.api import middleware
from control.api.dashboard import install_dashboard
from control.api.ratelimit import install_auth_guard
from control.api.readiness import install_readiness
from control.api.routes import routes
from control.appkeys import DNS_HEALTH, DNS_SYNC, PROVIDER_HEALTH, SCALER, SETTINGS
from control.billing.inbox import INBOX, StripeInbox, stripe_routes
from control.capacity.providers import build_provider
from control.capacity.providers.base import Provider, ProviderError
from control.capacity.providers.health import ProviderHealth, start_validation
from control.capacity.scaler import Scaler, UserDataRenderer
from control.db.store import Store
from control.dns.cloudflare import CloudflareDns
from control.dns.provider import DnsError, DnsProvider, NoDns
from control.dns.sync import DnsSync
from control.fleet import FLEET, Fleet
from control.keyring import Keyring
from control.metrics import METRICS, MeteredProvider, install_metrics
from control.settings import Settings
from control.workers.bootstrap import DIST, AgentDist, hetzner_user_data

ProviderFactory = Callable[[Settings], Provider]
PROVIDER_FACTORY: web.AppKey[ProviderFactory] = web.AppKey("provider_factory")


def create_app(
    settings: Settings, provider_factory: ProviderFactory = build_provider
) -> web.Application:
    app = web.Application(
        middlewares=[
            logs.request_ids,
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
    install_auth_guard(app, settings, lambda: app[FLEET].store, app[METRICS].auth_refused_by)
    app.add_routes(routes)
    app.add_routes(stripe_routes)
    install_dashboard(app)
    install_readiness(app)
    app.cleanup_ctx.append(_fleet_context)
    app.on_shutdown.append(_wake_long_polls)
    return app


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


async def _fleet_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = Store(settings.database_path)
    await store.open()
    keyring = Keyring(settings.internal_secret)
    fleet = Fleet(settings, store, keyring, app[METRICS])
    provider: Provider | None = None
    scheduler = AsyncIOScheduler()
    sweeper: asyncio.Task[None] | None = None
    stripe_task: asyncio.Task[None] | None = None
    validation: asyncio.Task[ProviderError | None] | None = None
    dns_check: asyncio.Task[DnsError | None] | None = None
    try:
        provider = MeteredProvider(app[PROVIDER_FACTORY](settings), app[METRICS])
        dns_sync = app[DNS_SYNC] = DnsSync(settings, store, build_dns(settings), app[DNS_HEALTH])
        # Both checks run at once, so start-up waits for them one wait in all.
        dns_check = dns_sync.start_verification()
        wait_until = asyncio.get_running_loop().time() + settings.provider_startup_wait
        validation = await start_validation(
            provider, app[PROVIDER_HEALTH], settings.provider_startup_wait
        )
        await DnsSync.refused_within(dns_check, wait_until - asyncio.get_running_loop().time())
        if not dns_check.done():  # verified late, after an outage: publish at once then
            dns_check.add_done_callback(lambda _: _soon(scheduler, dns_sync.tick, "dns-now"))
        scaler = Scaler(
            settings,
            store,
            keyring,
            provider,
            _user_data(app, settings, provider),
            fleet.board.notify,
            health=app[PROVIDER_HEALTH],
        )
        await fleet.start()
        fleet.board.on_change = lambda: _soon(scheduler, dns_sync.tick, "dns-now")
        fleet.on_pending = lambda: _nudge(scheduler, scaler)
        fleet.price_of = _price_lookup(provider)
        app[FLEET] = fleet
        app[SCALER] = scaler
        sweeper = asyncio.create_task(fleet.run_sweeps(), name="liveness-sweeps")
        inbox = StripeInbox(
            store,
            settings.stripe_webhook_secret,
            api_key=settings.stripe_secret_key,
            api_base=settings.stripe_api_base or None,
            livemode=settings.stripe_livemode,
            account_id=settings.stripe_account_id,
        )
        app[INBOX] = inbox
        stripe_task = asyncio.create_task(
            inbox.run(fleet.apply_billing, asyncio.Event()), name="stripe-inbox"
        )
        _every(scheduler, settings.autoscale_interval, "autoscale", scaler.tick, scheduled=True)
        _every(scheduler, settings.dns_reconcile_interval, "dns", dns_sync.tick)
        # Processed Stripe events are kept for deduplication, then deleted.
        _every(scheduler, 3600, "stripe-prune", inbox.prune_job)
        scheduler.start()
        yield
    finally:
        if scheduler.running:
            scheduler.shutdown(wait=False)
        if SCALER in app:
            await app[SCALER].stopped()
        fleet.board.close()
        await fleet.heartbeats.close()
        for task in (validation, dns_check, sweeper, stripe_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if DNS_SYNC in app:
            async with app[DNS_SYNC].stopped():
                await app[DNS_SYNC].provider.close()
        if provider is not None:
            await provider.close()
        await store.close()


def _every(
    scheduler: AsyncIOScheduler,
    seconds: float,
    job_id: str,
    job: Callable[..., Awaitable[None]],
    **kwargs: Any,
) -> None:
    """A periodic job that starts at once and never runs twice at a time."""
    scheduler.add_job(
        job,
        "interval",
        seconds=seconds,
        id=job_id,
        kwargs=kwargs,
        max_instances=1,
        coalesce=True,
        next_run_time=datetime.now(),
    )


def _price_lookup(provider: Provider) -> Callable[[str | None], float | None]:
    def price(server_type: str | None) -> float | None:
        if not server_type:
            return None
        try:
            return provider.server_type(server_type).hourly_price
        except Exception:  # a type the provider no longer lists: unknown price
            return None

    return price


def build_dns(settings: Settings) -> DnsProvider:
    if settings.dns_provider == "cloudflare":
        return CloudflareDns(
            settings.cloudflare_api_token,
            settings.cloudflare_zone_id,
            settings.base_domain,
            settings.cluster_name,
            api_base=settings.cloudflare_api_base,
        )
    return NoDns()


def _soon(scheduler: AsyncIOScheduler, job: Callable[[], Awaitable[None]], job_id: str) -> None:
    if scheduler.running:
        scheduler.add_job(job, id=job_id, replace_existing=True, max_instances=2)


def _nudge(scheduler: AsyncIOScheduler, scaler: Scaler) -> None:
    """A placement left users pending: run the autoscaler now, not at the next tick.
    Not a scheduled sweep, so it does not count towards orphan sightings."""
    if scheduler.running:
        scheduler.add_job(
            scaler.tick,
            id="autoscale-now",
            replace_existing=True,
            kwargs={"scheduled": False},
            # One may wait behind a run in progress (runs never overlap: Scaler's lock),
            # so a user left pending during a run is still seen by a run after it.
            max_instances=2,
        )


async def _wake_long_polls(app: web.Application) -> None:
    if FLEET in app:
        app[FLEET].board.close()
