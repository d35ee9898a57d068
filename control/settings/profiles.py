"""Tenant profiles: what a user's container runs, as data (docs/tenants.md).

Contract: `load(ref)` reads a profile by name (a file shipped in
control/settings/tenant_profiles/, e.g. `openclaw`, `generic`) or by path (an
operator's `*.toml`), with tomllib, strictly: an unknown key, a wrong type or a bad
value raises `Invalid` naming the file and the key, so TENANT_PROFILE fails start-up
with one line. `render_owned(profile, ...)` fills the owned config's placeholders
(`{origin}`, `{port}`, `{identity_header}`; `{{network_gateway}}` is left for the
agent). `[secrets.about]` gives each settable name the label and one-line hint the customer's
page shows (a name without one shows as itself); an entry for a name not in `names`,
or a label or hint that is empty, too long or not plain one-line text, is refused.
A profile is the foundation's (the settings parse it at start-up, like PLANS);
control/workers/specs.py turns it into a worker's spec.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control.errors import ConfigurationError
from shared.config import Invalid
from shared.merge_patch import merge_patch
from shared.protocol import ENV_NAME_PATTERN, HEADER_NAME_PATTERN, REL_PATH_PATTERN

SHIPPED = Path(__file__).resolve().parent / "tenant_profiles"
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_ENV = re.compile(ENV_NAME_PATTERN)
_KIND = re.compile(r"[a-z][a-z0-9]{0,15}")
_TARGET = re.compile(r"/[^\s]{0,1023}")
_REL = re.compile(REL_PATH_PATTERN)
_HEADER = re.compile(HEADER_NAME_PATTERN)
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")
# A label or hint is read by a buyer: one line of printable text (any script), bounded.
_WORDS = re.compile(r"[^\x00-\x1f\x7f]+")
LABEL_MAX, HINT_MAX = 60, 200
# `{name}` but not `{{name}}`: the doubled form is the agent's placeholder.
_PLACEHOLDER = re.compile(r"(?<!\{)\{([a-z_]+)\}(?!\})")
PLACEHOLDERS = ("origin", "port", "identity_header")


@dataclass(frozen=True)
class ConfigFile:
    volume: str  # a volume kind of the profile
    path: str
    seed: str  # JSON object text, written when the file is absent
    owned: str  # JSON object text with placeholders, merged over the file each start
    # Merged over `owned` only when the local demo's router listens on loopback.
    loopback_owned: str = ""


@dataclass(frozen=True)
class SecretField:
    """A settable secret as the customer's page shows it."""

    name: str
    label: str  # the name itself when the profile gives none
    hint: str = ""


@dataclass(frozen=True)
class Profile:
    name: str
    command: tuple[str, ...] | None  # None: the image's own command
    env: tuple[tuple[str, str], ...]
    volumes: tuple[tuple[str, str], ...]  # (kind, target in the container)
    health_path: str  # empty: AGENT_HEALTH_PATH
    health_headers: tuple[tuple[str, str], ...]  # sent with every probe
    startup_seconds: float
    min_memory_mb: int
    heap_fraction: float  # 0: no NODE_OPTIONS
    config: ConfigFile | None
    signin: bool
    identity_header: str
    secret_volume: str  # empty: no secrets can be set
    secret_path: str
    secret_names: tuple[str, ...]
    secret_fields: tuple[SecretField, ...] = ()  # one per name, in the same order


def load(ref: str) -> Profile:
    """The profile `ref` names: a shipped profile's name, or a path to a TOML file."""
    path = SHIPPED / f"{ref}.toml" if _NAME.fullmatch(ref) else Path(ref)
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.toml")))
        raise Invalid(f"no profile {ref!r} (shipped: {shipped}; or a path to a .toml file)")
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise Invalid(f"{path}: not readable TOML ({exc})") from None
    try:
        return _profile(path.stem, raw)
    except _Bad as exc:
        raise Invalid(f"{path}: {exc.message}") from None


class _Bad(ConfigurationError):
    """A key of the file is wrong; `load` adds the file's name."""


def _table(raw: Any, where: str, keys: dict[str, bool]) -> dict[str, Any]:
    """`raw` as a table with only `keys` (name -> required)."""
    if not isinstance(raw, dict):
        raise _Bad(f"{where}: expected a table")
    for key in raw:
        if key not in keys:
            raise _Bad(f"{where + '.' if where != '(top)' else ''}{key}: unknown key")
    for key, required in keys.items():
        if required and key not in raw:
            raise _Bad(f"{where + '.' if where != '(top)' else ''}{key}: required")
    return raw


def _get(table: dict[str, Any], key: str, kind: type, where: str, default: Any) -> Any:
    value = table.get(key, default)
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise _Bad(f"{where}: expected {kind.__name__}")
    return value


def _number(table: dict[str, Any], key: str, where: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(f"{where}: expected a number")
    return float(value)


def _text(table: dict[str, Any], key: str, where: str, pattern: re.Pattern[str]) -> str:
    value = _get(table, key, str, where, "")
    if value and not pattern.fullmatch(value):
        raise _Bad(f"{where}: {value!r} does not match {pattern.pattern}")
    return str(value)


def _profile(name: str, raw: dict[str, Any]) -> Profile:
    top = _table(
        raw,
        "(top)",
        {"command": False, "env": False, "volumes": True, "health": False, "min_memory_mb": True}
        | {"heap_fraction": False, "config": False, "signin": False, "secrets": False},
    )
    volumes = _volumes(top["volumes"])
    health = _table(
        top.get("health", {}),
        "health",
        {"path": False, "startup_seconds": False, "headers": False},
    )
    # 0 (unstated): the worker's own HEALTH_GATE applies.
    startup = _number(health, "startup_seconds", "health.startup_seconds", 0)
    if not 0 <= startup <= 3600:
        raise _Bad("health.startup_seconds: must be between 0 and 3600")
    memory = _get(top, "min_memory_mb", int, "min_memory_mb", 0)
    fraction = _number(top, "heap_fraction", "heap_fraction", 0)
    if not 16 <= memory <= 1024 * 1024 or not 0 <= fraction < 1:
        raise _Bad("min_memory_mb must be 16..1048576 and heap_fraction 0 <= f < 1")
    signin = _table(top.get("signin", {}), "signin", {"enabled": False, "identity_header": False})
    secret_volume, secret_path, secret_fields = _secrets(top.get("secrets"), volumes)
    profile = Profile(
        name=name,
        command=_command(top.get("command")),
        env=_env(top.get("env", {})),
        volumes=volumes,
        health_path=_text(health, "path", "health.path", _TARGET),
        health_headers=_headers(health.get("headers", {})),
        startup_seconds=float(startup),
        min_memory_mb=memory,
        heap_fraction=float(fraction),
        config=_config(top.get("config"), volumes),
        signin=_get(signin, "enabled", bool, "signin.enabled", False),
        identity_header=_text(signin, "identity_header", "signin.identity_header", _HEADER),
        secret_volume=secret_volume,
        secret_path=secret_path,
        secret_names=tuple(f.name for f in secret_fields),
        secret_fields=secret_fields,
    )
    if profile.signin and not profile.identity_header:
        raise _Bad("signin.identity_header: required when signin.enabled")
    render_owned(profile, "https://check.example", 1, "X-Check")  # placeholders are known
    return profile


def _command(raw: Any) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or not all(isinstance(a, str) for a in raw):
        raise _Bad("command: expected a non-empty list of strings")
    for arg in raw:
        unknown = set(_PLACEHOLDER.findall(arg)) - {"port"}
        if unknown:
            raise _Bad(f"command: unknown placeholder {{{sorted(unknown)[0]}}} (only {{port}})")
    return tuple(raw)


def _env(raw: Any) -> tuple[tuple[str, str], ...]:
    table = _get({"env": raw}, "env", dict, "env", {})
    for key, value in table.items():
        if not _ENV.fullmatch(key) or not isinstance(value, str):
            raise _Bad(f'env.{key}: expected NAME = "text"')
        if key == "NODE_OPTIONS":
            raise _Bad("env.NODE_OPTIONS: set by heap_fraction, not here")
    return tuple(sorted(table.items()))


def _headers(raw: Any) -> tuple[tuple[str, str], ...]:
    table = _get({"h": raw}, "h", dict, "health.headers", {})
    if len(table) > 8:
        raise _Bad("health.headers: at most 8")
    for key, value in table.items():
        ok = isinstance(value, str) and len(value) <= 256 and _HEADER_VALUE.fullmatch(value)
        if not _HEADER.fullmatch(key) or not ok:
            raise _Bad(f'health.headers.{key}: expected Header-Name = "printable text"')
    return tuple(sorted(table.items()))


def _volumes(raw: Any) -> tuple[tuple[str, str], ...]:
    table = _get({"v": raw}, "v", dict, "volumes", {})
    if not table:
        raise _Bad('volumes: at least one kind = "/target"')
    for kind, target in table.items():
        if (
            not _KIND.fullmatch(kind)
            or not isinstance(target, str)
            or not _TARGET.fullmatch(target)
        ):
            raise _Bad(f'volumes.{kind}: expected kind (a-z0-9) = "/absolute/target"')
    return tuple(table.items())


def _kind(value: str, volumes: tuple[tuple[str, str], ...], where: str) -> str:
    if value not in dict(volumes):
        raise _Bad(f"{where}: {value!r} is not one of the profile's volumes")
    return value


def _config(raw: Any, volumes: tuple[tuple[str, str], ...]) -> ConfigFile | None:
    if raw is None:
        return None
    keys = {"volume": True, "path": True, "seed": False, "owned": True, "loopback_owned": False}
    table = _table(raw, "config", keys)
    volume = _kind(_get(table, "volume", str, "config.volume", ""), volumes, "config.volume")
    seed = _get(table, "seed", str, "config.seed", "{}")
    if not isinstance(_json(seed, "config.seed"), dict):
        raise _Bad("config.seed: expected a JSON object")
    return ConfigFile(
        volume=volume,
        path=_text(table, "path", "config.path", _REL),
        seed=seed,
        owned=_get(table, "owned", str, "config.owned", ""),
        loopback_owned=_get(table, "loopback_owned", str, "config.loopback_owned", ""),
    )


def _secrets(
    raw: Any, volumes: tuple[tuple[str, str], ...]
) -> tuple[str, str, tuple[SecretField, ...]]:
    if raw is None:
        return "", "", ()
    keys = {"volume": True, "path": True, "names": True, "about": False}
    table = _table(raw, "secrets", keys)
    volume = _kind(_get(table, "volume", str, "secrets.volume", ""), volumes, "secrets.volume")
    names = _get(table, "names", list, "secrets.names", [])
    if not all(isinstance(n, str) and _ENV.fullmatch(n) for n in names):
        raise _Bad("secrets.names: expected a list of NAMES ([A-Za-z_][A-Za-z0-9_]*)")
    about = _get(table, "about", dict, "secrets.about", {})
    for name in about:
        if name not in names:
            raise _Bad(f"secrets.about.{name}: not one of secrets.names")
    fields = tuple(_field(name, about.get(name)) for name in names)
    return volume, _text(table, "path", "secrets.path", _REL), fields


def _field(name: str, raw: Any) -> SecretField:
    """`{label = "...", hint = "..."}` for `name` (None: labelled by the name)."""
    if raw is None:
        return SecretField(name, name)
    where = f"secrets.about.{name}"
    table = _table(raw, where, {"label": True, "hint": False})
    label = _get(table, "label", str, f"{where}.label", "")
    hint = _get(table, "hint", str, f"{where}.hint", "")
    for key, text, most in (("label", label, LABEL_MAX), ("hint", hint, HINT_MAX)):
        fits = _WORDS.fullmatch(text) and text.strip() and len(text) <= most
        if (text or key == "label") and not fits:
            raise _Bad(f"{where}.{key}: expected one line of 1-{most} printable characters")
    return SecretField(name, label, hint)


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Bad(f"{where}: not JSON ({exc.msg} at {exc.pos})") from None


def render_owned(
    profile: Profile, origin: str, port: int, identity_header: str, loopback: bool = False
) -> str:
    """The profile's owned config as JSON text, placeholders filled (text stays JSON
    strings: values are JSON-escaped inside them, `{port}` is a bare number); with
    `loopback`, `loopback_owned` is merge-patched over it."""
    if profile.config is None:
        return ""
    values = {
        "origin": json.dumps(origin)[1:-1],
        "port": str(port),
        "identity_header": json.dumps(identity_header)[1:-1],
    }

    def fill(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            raise _Bad(f"config.owned: unknown placeholder {match.group(0)}")
        return values[match.group(1)]

    owned = _object(_PLACEHOLDER.sub(fill, profile.config.owned), "config.owned")
    extra = _object(
        _PLACEHOLDER.sub(fill, profile.config.loopback_owned or "{}"), "config.loopback_owned"
    )
    if loopback:
        owned = merge_patch(owned, extra)
    return json.dumps(owned, sort_keys=True, separators=(",", ":"))


def _object(text: str, where: str) -> dict[str, Any]:
    found = _json(text, where)
    if not isinstance(found, dict):
        raise _Bad(f"{where}: expected a JSON object")
    return found
