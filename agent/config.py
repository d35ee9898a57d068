"""Agent settings: one frozen object built from a plain mapping.

Contract: `load_settings(env)` is the only function that interprets configuration; it
receives the process environment (read in `__main__` only) merged over an env file
(`AGENT_ENV_FILE`, default `/etc/clawfleet/agent.env` when present). A missing or
malformed value raises `ConfigError` whose message names the variable and never
repeats a secret's value; `__main__` prints it as one line and exits with status 2.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from shared.names import env_name_ok

DEFAULT_ENV_FILE = "/etc/clawfleet/agent.env"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    control_url: str
    state_dir: Path = Path("/var/lib/clawfleet")
    # Never printed: repr=False keeps it out of logs and tracebacks.
    bootstrap_token: str | None = dataclasses.field(default=None, repr=False)
    bootstrap_token_file: Path | None = None
    docker_host: str | None = None
    traefik_dynamic_dir: Path = Path("/etc/clawfleet/traefik")
    traefik_entrypoints: tuple[str, ...] = ("websecure",)
    traefik_tls: bool = True
    traefik_cert_resolver: str = ""
    iptables: tuple[str, ...] = ("iptables",)
    health_gate: float = 60.0
    health_timeout: float = 2.0
    reconcile_interval: float = 30.0
    poll_wait: int = 55
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    stop_grace: int = 30
    upgrade_retry: float = 600.0
    docker_timeout: float = 60.0
    request_timeout: float = 15.0
    log_level: str = "INFO"


def parse_env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and '#' comments ignored; optional matching quotes."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not env_name_ok(key):
            raise ConfigError(f"env file line {number}: expected KEY=VALUE")
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


# Plain ASCII decimals: float() would also take "nan", "1e9", "1_0" and other scripts' digits.
_NUMBER = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,6})?")


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not _NUMBER.fullmatch(raw):
        raise ConfigError(f"{name}: expected a number, got {raw!r}")
    value = float(raw)
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum:g}, got {raw!r}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: expected true or false, got {raw!r}")


def _token_shape_ok(token: str) -> bool:
    key_id, dot, secret = token.partition(".")
    return (
        bool(dot and key_id and secret)
        and token.isascii()
        and token.isprintable()
        and (not any(c.isspace() for c in token))
    )


def load_settings(env: Mapping[str, str]) -> Settings:
    control_url = env.get("CONTROL_URL", "").strip().rstrip("/")
    if not control_url:
        raise ConfigError("CONTROL_URL: required (the control plane's base URL)")
    parts = urlsplit(control_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"CONTROL_URL: expected an http(s) URL, got {control_url!r}")

    token = env.get("BOOTSTRAP_TOKEN", "").strip() or None
    token_file_raw = env.get("BOOTSTRAP_TOKEN_FILE", "").strip()
    token_file = Path(token_file_raw) if token_file_raw else None
    if token is not None and not _token_shape_ok(token):
        # The value is a secret: name the variable, never echo it.
        raise ConfigError("BOOTSTRAP_TOKEN: malformed (expected <id>.<secret>)")

    state_dir = Path(env.get("STATE_DIR", "").strip() or "/var/lib/clawfleet")
    if not state_dir.is_absolute():
        raise ConfigError(f"STATE_DIR: must be an absolute path, got {str(state_dir)!r}")

    iptables_raw = env.get("IPTABLES", "").strip() or "iptables"
    try:
        iptables = tuple(shlex.split(iptables_raw))
    except ValueError as exc:
        raise ConfigError(f"IPTABLES: {exc}") from None
    if not iptables:
        raise ConfigError("IPTABLES: empty command")

    entrypoints_raw = env.get("TRAEFIK_ENTRYPOINTS", "").strip() or "websecure"
    entrypoints = tuple(e.strip() for e in entrypoints_raw.split(",") if e.strip())

    level = (env.get("LOG_LEVEL", "").strip() or "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"LOG_LEVEL: expected DEBUG, INFO, WARNING or ERROR, got {level!r}")

    num: Callable[..., float] = _number
    poll_wait = int(num(env, "POLL_WAIT", 55, minimum=0))
    if poll_wait > 60:
        raise ConfigError(f"POLL_WAIT: at most 60 seconds, got {poll_wait}")
    backoff_base = num(env, "BACKOFF_BASE", 1.0, minimum=0.01)
    backoff_max = num(env, "BACKOFF_MAX", 60.0, minimum=0.01)
    if backoff_max < backoff_base:
        raise ConfigError("BACKOFF_MAX: must be at least BACKOFF_BASE")

    return Settings(
        control_url=control_url,
        state_dir=state_dir,
        bootstrap_token=token,
        bootstrap_token_file=token_file,
        docker_host=env.get("DOCKER_HOST", "").strip() or None,
        traefik_dynamic_dir=Path(
            env.get("TRAEFIK_DYNAMIC_DIR", "").strip() or "/etc/clawfleet/traefik"
        ),
        traefik_entrypoints=entrypoints,
        traefik_tls=_bool(env, "TRAEFIK_TLS", True),
        traefik_cert_resolver=env.get("TRAEFIK_CERT_RESOLVER", "").strip(),
        iptables=iptables,
        health_gate=num(env, "HEALTH_GATE", 60.0, minimum=0.1),
        health_timeout=num(env, "HEALTH_TIMEOUT", 2.0, minimum=0.1),
        reconcile_interval=num(env, "RECONCILE_INTERVAL", 30.0, minimum=0.1),
        poll_wait=poll_wait,
        backoff_base=backoff_base,
        backoff_max=backoff_max,
        stop_grace=int(num(env, "STOP_GRACE", 30, minimum=0)),
        upgrade_retry=num(env, "UPGRADE_RETRY", 600.0, minimum=0),
        docker_timeout=num(env, "DOCKER_TIMEOUT", 60.0, minimum=1),
        request_timeout=num(env, "REQUEST_TIMEOUT", 15.0, minimum=1),
        log_level=level,
    )


def settings_from_process(environ: Mapping[str, str] | None = None) -> Settings:
    return load_settings(read_environment(os.environ if environ is None else environ))
