"""Typed keys for the long-lived objects the app factory puts on the application,
in one module so that routes can read them without importing the factory."""

from __future__ import annotations

from aiohttp import web

from control.capacity.providers.health import ProviderHealth
from control.capacity.scaler import Scaler
from control.dns.sync import DnsSync
from control.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
SCALER = web.AppKey("scaler", Scaler)
DNS_SYNC = web.AppKey("dns_sync", DnsSync)
PROVIDER_HEALTH = web.AppKey("provider_health", ProviderHealth)
DNS_HEALTH = web.AppKey("dns_health", ProviderHealth)  # the DNS provider's verification
