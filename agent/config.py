"""Agent settings: one frozen object built from a plain mapping.

Contract: `load_settings(env)` is the only function that interprets configuration; every
variable is declared once, as a `Settings` field made by `shared.config.setting` (name,
default, parser, help; docs/agent.md is the reference an operator reads). It receives the process environment (read in `__main__` only) merged over an env file
(`AGENT_ENV_FILE`, default `/etc/clawfleet/agent.env` when present). A missing or
malformed value raises `ConfigError` whose message names the variable and never
repeats a secret's value; `__main__` prints it as one line and exits with status 2.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from agent.errors import AgentError
from shared.config import (
    Invalid,
    absolute_path,
    choice,
    flag,
    items,
    number,
    read,
    setting,
    text,
    url,
    whole,
)
from shared.names import env_name_ok

T = TypeVar("T")

DEFAULT_ENV_FILE = "/etc/clawfleet/agent.env"


class ConfigError(AgentError):
    """A setting is missing or malformed; the message names the variable."""

    code = "invalid_setting"


def _token(value: str) -> str | None:
    if not value:
        return None
    key_id, dot, secret = value.partition(".")
    shape_ok = bool(dot and key_id and secret) and value.isascii() and value.isprintable()
    if not shape_ok or any(c.isspace() for c in value):
        # The value is a secret: say what is wrong, never echo it.
        raise Invalid("malformed (expected <id>.<secret>)")
    return value


def _maybe(parse: Callable[[str], T]) -> Callable[[str], T | None]:
    """Empty is None (the library's own default applies)."""
    return lambda value: parse(value) if value else None


def _maybe_address(value: str) -> str:
    """Empty, or an IP address that is not loopback (the point is to not be loopback)."""
    if not value:
        return ""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise Invalid("expected an IP address") from None
    if address.is_loopback:
        raise Invalid("a loopback address is what this setting replaces")
    return str(address)


def _argv(value: str) -> tuple[str, ...]:
    try:
        argv = tuple(shlex.split(value))
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    if not argv:
        raise Invalid("empty command")
    return argv


@dataclass(frozen=True)
class Settings:
    control_url: str = setting(
        "CONTROL_URL", None, url, "Control plane base URL (https in production).", required=True
    )
    state_dir: Path = setting(
        "STATE_DIR", "/var/lib/clawfleet", absolute_path, "Credentials and last desired set."
    )
    loop_volume_dir: Path | None = setting(
        "LOOP_VOLUME_DIR",
        "",
        _maybe(absolute_path),
        "Files of loop:<name> volumes (default STATE_DIR/volumes).",
    )
    # Never printed: repr=False (secret=True) keeps it out of logs and tracebacks.
    bootstrap_token: str | None = setting(
        "BOOTSTRAP_TOKEN", "", _token, "<id>.<secret> join token (first start).", secret=True
    )
    bootstrap_token_file: Path | None = setting(
        "BOOTSTRAP_TOKEN_FILE", "", _maybe(Path), "File holding the token."
    )
    docker_host: str | None = setting("DOCKER_HOST", "", _maybe(str), "Docker engine.")
    traefik_dynamic_dir: Path = setting(
        "TRAEFIK_DYNAMIC_DIR", "/etc/clawfleet/traefik", Path, "Traefik's file provider dir."
    )
    traefik_entrypoints: tuple[str, ...] = setting(
        "TRAEFIK_ENTRYPOINTS", "websecure", items(at_least_one=False), "Routers' entry points."
    )
    traefik_tls: bool = setting("TRAEFIK_TLS", "true", flag, "Adds tls to each router.")
    auth_port: int = setting(
        "AUTH_PORT", "8099", whole(1, 65535), "Sign-in verifier's port on 127.0.0.1."
    )
    traefik_client_address: str = setting(
        "TRAEFIK_CLIENT_ADDRESS",
        "",
        _maybe_address,
        "Local demo only: the client address routes claim in X-Forwarded-For.",
    )
    traefik_cert_resolver: str = setting(
        "TRAEFIK_CERT_RESOLVER", "", text, "ACME resolver name for tls.certResolver."
    )
    traefik_group: str = setting(
        "TRAEFIK_GROUP",
        "clawfleet-traefik",
        text,
        "Group that may read the origin TLS file (it holds the key); absent: owner only.",
    )
    iptables: tuple[str, ...] = setting("IPTABLES", "iptables", _argv, "iptables command.")
    health_gate: float = setting("HEALTH_GATE", "60", number(0.1), "Seconds to get healthy.")
    health_timeout: float = setting("HEALTH_TIMEOUT", "2", number(0.1), "Seconds per probe.")
    reconcile_interval: float = setting(
        "RECONCILE_INTERVAL", "30", number(0.1), "Seconds between periodic reconciles."
    )
    poll_wait: int = setting("POLL_WAIT", "55", whole(0, 60), "Long-poll wait (at most 60).")
    backoff_base: float = setting("BACKOFF_BASE", "1", number(0.01), "Backoff base (s).")
    backoff_max: float = setting("BACKOFF_MAX", "60", number(0.01), "Backoff cap (s).")
    stop_grace: int = setting("STOP_GRACE", "30", whole(0), "Seconds to stop a container.")
    upgrade_retry: float = setting(
        "UPGRADE_RETRY", "600", number(0), "Seconds before a failed spec is tried again."
    )
    docker_timeout: float = setting(
        "DOCKER_TIMEOUT", "60", number(1), "Seconds per Docker API call."
    )
    container_log_mb: int = setting(
        "CONTAINER_LOG_MB", "10", whole(1, 1024), "A container's log file size before rotation."
    )
    container_log_files: int = setting(
        "CONTAINER_LOG_FILES", "3", whole(1, 100), "Log files kept per container."
    )
    request_timeout: float = setting(
        "REQUEST_TIMEOUT", "15", number(1), "Seconds per control-plane request."
    )
    log_level: str = setting(
        "LOG_LEVEL",
        "INFO",
        choice("DEBUG", "INFO", "WARNING", "ERROR", fold=str.upper),
        "Log level.",
    )


def parse_env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and '#' comments ignored; optional matching quotes."""
    values: dict[str, str] = {}
    for line_number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not env_name_ok(key):
            raise ConfigError(f"env file line {line_number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values


def read_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The env file's values with the process environment on top."""
    explicit = environ.get("AGENT_ENV_FILE")
    path = Path(explicit or DEFAULT_ENV_FILE)
    merged: dict[str, str] = {}
    if explicit or path.exists():
        try:
            merged.update(parse_env_file(path.read_text()))
        except OSError as exc:
            raise ConfigError(f"AGENT_ENV_FILE: cannot read {path}: {exc.strerror}") from None
        except ConfigError as exc:
            raise ConfigError(f"AGENT_ENV_FILE {path}: {exc}") from None
    merged.update(environ)
    return merged


def load_settings(env: Mapping[str, str]) -> Settings:
    settings = Settings(**read(Settings, env, ConfigError))
    if settings.backoff_max < settings.backoff_base:
        raise ConfigError("BACKOFF_MAX: must be at least BACKOFF_BASE")
    return settings


def settings_from_process(environ: Mapping[str, str] | None = None) -> Settings:
    return load_settings(read_environment(os.environ if environ is None else environ))
