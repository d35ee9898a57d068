"""Settings declared once: the machinery the control plane's and the agent's settings share.

Contract: a settings class is a frozen dataclass whose environment-backed fields are each
declared once, with `setting(name, default, parse, help, ...)`: the variable's name, its
default as an operator would write it (None: no default), the parser that turns the text
into the field's value, and the help text. From that one declaration:
- the dataclass field's default is `parse(default)`, or `value` when the real default is
  derived from other variables (the caller's `from_env` fills it in); a `required`
  variable has no field default;
- `read(cls, env, error)` reads every declared variable (stripped; empty means unset, so
  the default applies), parses it and returns {field name: value}; the first missing or
  malformed one raises `error("NAME: what was expected")`;
- `variables(cls)` lists the declarations in field order (for generated documentation).
Fields declared without `setting()` are not read from the environment.

Parsers raise `Invalid` with a message that says what was expected and never repeats a
secret's value; the variable's name is added by `read`. `Invalid` is a ValueError (like
shared.protocol.ProtocolError): a malformed value, caught by `read` and re-raised as the
program's own error, so it never reaches a caller.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")
Parser = Callable[[str], T]
_METADATA_KEY = "clawfleet.variable"
# Plain ASCII decimals: float() would also take "nan", "1e9", "1_0" and other scripts' digits.
_NUMBER = re.compile(r"-?[0-9]{1,9}(?:\.[0-9]{1,6})?")
_WHOLE = re.compile(r"-?[0-9]{1,12}")
_PORT = re.compile(r"[0-9]{1,5}")


class Invalid(ValueError):
    """A parser refused a value; the message says what was expected, without the name."""


@dataclass(frozen=True)
class Variable:
    name: str
    default: str | None  # as an operator would write it; None: none
    help: str
    parse: Callable[[str], object] = dataclasses.field(repr=False, compare=False)
    secret: bool = False
    required: bool = False
    field: str = ""  # the settings field it fills (set by `variables`)


def setting(
    name: str,
    default: str | None,
    parse: Callable[[str], Any],
    help: str,
    *,
    secret: bool = False,
    required: bool = False,
    value: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field read from the environment variable `name` (module docstring)."""
    var = Variable(name, default, help, parse, secret=secret, required=required)
    meta = {_METADATA_KEY: var}
    if required:
        return dataclasses.field(repr=not secret, metadata=meta)
    if value is dataclasses.MISSING:
        value = parse(default or "")
    if value.__hash__ is None:  # a dict or list: each instance gets its own
        return dataclasses.field(
            default_factory=lambda: parse(default or ""), repr=not secret, metadata=meta
        )
    return dataclasses.field(default=value, repr=not secret, metadata=meta)


def variables(cls: type) -> tuple[Variable, ...]:
    """The declared variables of a settings dataclass, in field order."""
    return tuple(
        dataclasses.replace(f.metadata[_METADATA_KEY], field=f.name)
        for f in dataclasses.fields(cls)
        if _METADATA_KEY in f.metadata
    )


def read(cls: type, env: Mapping[str, str], error: type[Exception]) -> dict[str, Any]:
    """{field: parsed value} for every declared variable of `cls` (module docstring)."""
    values: dict[str, Any] = {}
    for var in variables(cls):
        raw = env.get(var.name, "").strip() or (var.default or "")
        if not raw and var.required:
            raise error(f"{var.name}: required but not set")
        values[var.field] = check(var.name, var.parse, raw, error)
    return values


def check(name: str, parse: Callable[[str], T], raw: str, error: type[Exception]) -> T:
    """`parse(raw)`, with a refusal raised as `error("NAME: ...")`."""
    try:
        return parse(raw)
    except Invalid as exc:
        raise error(f"{name}: {exc}") from None


# --- parsers ----------------------------------------------------------------------------


def text(value: str) -> str:
    return value


def number(low: float = 0.0, high: float = math.inf) -> Parser[float]:
    def parse(value: str) -> float:
        if not _NUMBER.fullmatch(value):
            raise Invalid(f"expected a number, got {value!r}")
        return _in_range(float(value), value, low, high)

    return parse


def whole(low: int = 0, high: float = math.inf) -> Parser[int]:
    def parse(value: str) -> int:
        if not _WHOLE.fullmatch(value):
            raise Invalid(f"expected a whole number, got {value!r}")
        return int(_in_range(int(value), value, low, high))

    return parse


def _in_range(number: float, value: str, low: float, high: float) -> float:
    if high == math.inf and number < low:
        raise Invalid(f"must be at least {low:g}, got {value!r}")
    if not low <= number <= high:
        raise Invalid(f"must be between {low:g} and {high:g}, got {value!r}")
    return number


def port(value: str) -> int:
    if not _PORT.fullmatch(value) or not 1 <= int(value) <= 65535:
        raise Invalid(f"expected a port number 1-65535, got {value!r}")
    return int(value)


def choice(*options: str, fold: Callable[[str], str] = str) -> Parser[str]:
    def parse(value: str) -> str:
        value = fold(value)
        if value not in options:
            raise Invalid(f"expected one of {', '.join(options)}, got {value!r}")
        return value

    return parse


def items(*, at_least_one: bool) -> Parser[tuple[str, ...]]:
    """A comma-separated list (blank entries dropped)."""

    def parse(value: str) -> tuple[str, ...]:
        found = tuple(part.strip() for part in value.split(",") if part.strip())
        if at_least_one and not found:
            raise Invalid(f"expected a comma-separated list, got {value!r}")
        return found

    return parse


def url(value: str) -> str:
    """An http(s) URL, without a trailing slash."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(f"expected an http(s) URL, got {value!r}")
    return value.rstrip("/")


def optional(parse: Parser[T]) -> Parser[T | str]:
    """Empty stays empty; anything else must pass `parse`."""
    return lambda value: parse(value) if value else ""


def matching(
    ok: Callable[[str], object], what: str, *, fold: Callable[[str], str] = str
) -> Parser[str]:
    def parse(value: str) -> str:
        value = fold(value)
        if not ok(value):
            raise Invalid(f"expected {what}, got {value!r}")
        return value

    return parse


def secret_text(minimum: int) -> Parser[str]:
    def parse(value: str) -> str:
        if len(value) < minimum:
            raise Invalid(f"must be at least {minimum} characters")  # never the value
        return value

    return parse


def flag(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise Invalid(f"expected true or false, got {lowered!r}")


def absolute_path(value: str) -> Path:
    path = Path(value)
    if not path.is_absolute():
        raise Invalid(f"must be an absolute path, got {value!r}")
    return path


def reference_rows(cls: type) -> list[str]:
    """One Markdown table row per declared variable: name, default, meaning."""
    rows = []
    for var in variables(cls):
        default = "required" if var.required else (f"`{var.default}`" if var.default else "(empty)")
        marker = " **Secret.**" if var.secret else ""
        rows.append(f"| `{var.name}` | {default} | {var.help}{marker} |")
    return rows
