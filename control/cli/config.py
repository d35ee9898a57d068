"""Where `clawfleet` talks to and with which credentials, from flags and the environment.

Contract: `base_url` is `--url`, else `CLAWFLEET_URL`, else DEFAULT_URL, and must be
http(s)://host[:port]; `timeout` is `CLAWFLEET_TIMEOUT` seconds in (0, 3600] (default
10); `admin_token` is `--token-file`, else `ADMIN_TOKEN`, else ./data/admin_token (written
by `make run`), and must be printable ASCII without spaces. Each raises a `CliError` with
EXIT_USAGE otherwise, naming where a bad token came from, never the token.
"""

from __future__ import annotations

import argparse
import os
import re
import urllib.parse
from pathlib import Path

from control.cli.client import EXIT_USAGE, CliError, describe

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TOKEN_FILE = Path("data/admin_token")
DEFAULT_TIMEOUT = 10.0
# Bearer tokens are header values: printable ASCII without spaces.
_TOKEN = re.compile(r"^[\x21-\x7e]+$")


def base_url(args: argparse.Namespace) -> str:
    url = (getattr(args, "url", None) or os.environ.get("CLAWFLEET_URL") or DEFAULT_URL).strip()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CliError(
            EXIT_USAGE, f"the control plane URL must be http(s)://host[:port], got {url!r}"
        )
    return url.rstrip("/")


def timeout() -> float:
    raw = os.environ.get("CLAWFLEET_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise CliError(EXIT_USAGE, f"CLAWFLEET_TIMEOUT must be seconds in (0, 3600], got {raw!r}")
    return value


def admin_token(args: argparse.Namespace) -> str:
    token_file = getattr(args, "token_file", None)
    if token_file is not None:
        token, origin = _read_token(Path(token_file)), f"--token-file {token_file}"
    elif os.environ.get("ADMIN_TOKEN", "").strip():
        token, origin = os.environ["ADMIN_TOKEN"].strip(), "ADMIN_TOKEN"
    elif DEFAULT_TOKEN_FILE.is_file():
        token, origin = _read_token(DEFAULT_TOKEN_FILE), f"./{DEFAULT_TOKEN_FILE}"
    else:
        raise CliError(
            EXIT_USAGE,
            f"no admin token: set ADMIN_TOKEN, pass --token-file, or run where `make run` "
            f"wrote ./{DEFAULT_TOKEN_FILE}",
        )
    if not _TOKEN.fullmatch(token):
        # Says where the token came from, never what it is.
        raise CliError(EXIT_USAGE, f"the admin token from {origin} is empty or has spaces")
    return token


def _read_token(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(
            EXIT_USAGE, f"cannot read the admin token from {path}: {describe(exc)}"
        ) from None
