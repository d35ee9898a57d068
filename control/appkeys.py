"""Every typed key the app factory (control/app.py) puts on the aiohttp application,
in one module, so that routes and middleware read the app's state without importing
the factory, and the domain modules never see aiohttp's application at all.

Contract: this module only names keys. The types are imported for the type checker
alone (the keys carry them as annotations), so importing it imports none of the
modules it names. Who sets each key, and when:
- at construction (`create_app`): SETTINGS, PROVIDER_FACTORY, METRICS, METRICS_MODE,
  PROVIDER_HEALTH, DNS_HEALTH, AUTH_GUARD, AGENT_PACE, SESSIONS, STORE_PROBE, SCHEDULER (started
  only once everything below runs), LEADERSHIP (started by its own context);
- by the cleanup context that owns the resource, on start-up, in this order: STORE,
  PROVIDER, DNS_SYNC, FIREWALL_SYNC, FLEET, SCALER (and DIST with a real provider),
  INBOX. A key is absent until its resource is running: readers that may run earlier
  (the webhook, /readyz, /metrics) test `key in app` first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

from aiohttp import web

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from control.api.agent_pace import AgentPace
    from control.api.metrics_endpoint import MetricsMode
    from control.api.origin_tls_routes import OriginTlsSlot
    from control.api.ratelimit import AuthGuard
    from control.api.readiness import StoreProbe
    from control.api.sessions import SessionStore
    from control.billing.inbox import StripeInbox
    from control.capacity.providers.base import Provider
    from control.capacity.scaler import Scaler
    from control.db.store import Store
    from control.dns.sync import DnsSync
    from control.edge.firewall_sync import FirewallSync
    from control.fleet import Fleet
    from control.health import ProviderHealth
    from control.leadership.leadership import Leadership
    from control.metrics import Metrics
    from control.settings import Settings
    from control.workers.bootstrap import AgentDist

ProviderFactory: TypeAlias = "Callable[[Settings], Provider]"

# Set when the app is built.
SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
PROVIDER_FACTORY: web.AppKey[ProviderFactory] = web.AppKey("provider_factory")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
METRICS_MODE: web.AppKey[MetricsMode] = web.AppKey("metrics_mode")  # who may read /metrics
PROVIDER_HEALTH: web.AppKey[ProviderHealth] = web.AppKey("provider_health")
DNS_HEALTH: web.AppKey[ProviderHealth] = web.AppKey("dns_health")  # DNS verification
AUTH_GUARD: web.AppKey[AuthGuard] = web.AppKey("auth_guard")
AGENT_PACE: web.AppKey[AgentPace] = web.AppKey("agent_pace")
SESSIONS: web.AppKey[SessionStore] = web.AppKey("dashboard_sessions")
STORE_PROBE: web.AppKey[StoreProbe] = web.AppKey("store_probe")
SCHEDULER: web.AppKey[AsyncIOScheduler] = web.AppKey("scheduler")
LEADERSHIP: web.AppKey[Leadership] = web.AppKey("leadership")  # the singletons' lease

# Set by each resource's cleanup context once it runs.
STORE: web.AppKey[Store] = web.AppKey("store")
PROVIDER: web.AppKey[Provider] = web.AppKey("provider")  # metered
DNS_SYNC: web.AppKey[DnsSync] = web.AppKey("dns_sync")
FIREWALL_SYNC: web.AppKey[FirewallSync] = web.AppKey("firewall_sync")  # the edge firewall
SCALER: web.AppKey[Scaler] = web.AppKey("scaler")
DIST: web.AppKey[AgentDist] = web.AppKey("dist")  # the agent wheel, real providers only
FLEET: web.AppKey[Fleet] = web.AppKey("fleet")
INBOX: web.AppKey[StripeInbox] = web.AppKey("stripe_inbox")
ORIGIN_TLS: web.AppKey[OriginTlsSlot] = web.AppKey("origin_tls")  # its .service: None if off
