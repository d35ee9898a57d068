"""The control plane's own value rules: the parsers of its special variables and the
checks that involve more than one variable, raising `SettingsError`.

Contract: every parser here takes the stripped text of one variable and returns its value
or raises `shared.config.Invalid` (control/settings/__init__.py adds the name);
`check_together(settings)` and `stripe_livemode(...)` raise `SettingsError` naming the
variable that must change. No message repeats a secret's value.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from control.errors import ConfigurationError
from control.plans import Plan, PlanError, parse_plans
from control.settings import profiles
from shared.config import Invalid
from shared.names import parse_container_user
from shared.protocol import MAX_VOLUME_GB

if TYPE_CHECKING:
    from control.settings import Settings


# The client address the local router claims for browsers on this machine: the gateway
# refuses a loopback client behind a proxy (docs/openclaw-config.md, 3). TEST-NET-1, so it
# is never a real peer.
LOOPBACK_CLIENT_ADDRESS = "192.0.2.255"


def loopback_router(settings: Settings) -> bool:
    """PROVIDER=local with its router on a loopback address: every browser is local."""
    if settings.provider != "local" or not settings.local_router_address:
        return False
    host = settings.local_router_address.rpartition(":")[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


class SettingsError(ConfigurationError):
    """A setting is missing or malformed; the message names the variable."""

    code = "invalid_setting"


SECRET_MIN = 32
DAY = 86400
VERSION = re.compile(r"^[0-9][0-9A-Za-z.+_-]{0,31}$")
LABEL = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
ACCOUNT = re.compile(r"acct_[A-Za-z0-9]{1,64}")
DOMAIN = re.compile(
    r"^(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
)


def agent_user(value: str) -> str:
    # Numbers as numbers: "00" is uid 0. Workers check the same rule (shared/names.py).
    try:
        parse_container_user(value)
    except ValueError as exc:
        raise Invalid(f"agent containers never run as root: {exc}") from None
    return value


def database_url(value: str) -> str:
    """Empty (SQLite at DATABASE_PATH) or a PostgreSQL URL naming a database; the message
    never repeats the value, which may hold a password."""
    if not value:
        return ""
    try:
        parts = urlsplit(value)
        ok = parts.scheme in ("postgresql", "postgres") and parts.port != 0
    except ValueError:  # a port that is not a number
        ok = False
    if not ok or not parts.path.strip("/"):
        raise Invalid("expected postgresql://user:password@host[:port]/database")
    return value


def plans(value: str) -> dict[str, Plan]:
    try:
        return parse_plans(value)
    except PlanError as exc:
        raise Invalid(exc.message) from None


def tenant_profile(value: str) -> profiles.Profile:
    return profiles.load(value)


def check_together(settings: Settings) -> None:
    """The rules that involve more than one variable."""
    if settings.provider == "hetzner":
        url = urlsplit(settings.public_url)
        if url.scheme != "https" or url.hostname in ("127.0.0.1", "localhost", "::1"):
            # Remote workers must reach it, and the registration reply carries a secret.
            raise SettingsError(
                "PUBLIC_URL: with PROVIDER=hetzner it must be the https URL workers reach"
            )
    if settings.dns_provider == "cloudflare":
        for name, value in (
            ("CLOUDFLARE_API_TOKEN", settings.cloudflare_api_token),
            ("CLOUDFLARE_ZONE_ID", settings.cloudflare_zone_id),
        ):
            if not value:
                raise SettingsError(f"{name}: required when DNS_PROVIDER=cloudflare")
    if settings.provider == "hetzner" and not settings.hetzner_api_token:
        raise SettingsError("HETZNER_API_TOKEN: required when PROVIDER=hetzner")
    if settings.min_servers > settings.max_servers:
        raise SettingsError("MIN_SERVERS: must not exceed MAX_SERVERS")
    if settings.dead_after <= 3 * settings.heartbeat_interval:
        raise SettingsError("DEAD_AFTER: must be longer than 3 x HEARTBEAT_INTERVAL")
    check_plans_fit(settings.plans, settings.tenant_profile)
    if settings.user_volumes:
        check_plans_disk(settings.plans)
    settings.check_backups()
    settings.check_mail()
    settings.check_edge(settings.provider, settings.dns_provider)


def check_plans_fit(plans: dict[str, Plan], profile: profiles.Profile) -> None:
    """Every plan gives the tenant at least what its profile needs to start."""
    for plan in sorted(plans.values(), key=lambda p: p.name):
        if plan.memory_mb < profile.min_memory_mb:
            raise SettingsError(
                f"PLANS: plan {plan.name} has {plan.memory_mb} MB, below the "
                f"{profile.min_memory_mb} MB TENANT_PROFILE {profile.name} needs"
            )


def check_plans_disk(plans: dict[str, Plan]) -> None:
    """With USER_VOLUMES a plan's disk is the user's volume: no larger than one volume."""
    for plan in sorted(plans.values(), key=lambda p: p.name):
        if plan.disk_gb > MAX_VOLUME_GB:
            raise SettingsError(
                f"PLANS: plan {plan.name} has disk_gb {plan.disk_gb}, above the "
                f"{MAX_VOLUME_GB} GB one volume holds (USER_VOLUMES)"
            )


def stripe_livemode(mode: str, key: str, provider: str) -> bool:
    """Live or test. The key's own mode is authoritative; a stated mode must agree
    with it. Without a key, a real deployment (Hetzner) is live unless told otherwise."""
    key_mode = next((m for m in ("live", "test") if key.startswith((f"sk_{m}_", f"rk_{m}_"))), None)
    if mode == "auto":
        return (key_mode or ("live" if provider == "hetzner" else "test")) == "live"
    if key_mode is not None and key_mode != mode:
        raise SettingsError(f"STRIPE_LIVEMODE: {mode}, but STRIPE_SECRET_KEY is a {key_mode} key")
    return mode == "live"
