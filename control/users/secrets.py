"""A customer's secrets and settings (model-provider API keys and the like).

Contract: they are stored as one Fernet-encrypted JSON object per user
(`users.secrets_ciphertext`, written only by control/users/records.py), reach the
container only as the profile's secret file (control/workers/specs.py), and are
never logged, recorded in events or shown: readers get names, never values.
`check_changes` is pure and refuses, with a 400 naming the key, a name the tenant
profile does not allow (names are matched whole) or a value the secret file could
not carry as one `NAME=value` line: empty, over `MAX_VALUE` characters, a line break,
NUL or other control character, a quote or backtick (dotenv would unquote it), `#`
(dotenv would cut an unquoted value there), or leading/trailing blanks (trimmed).
`change` merges (None deletes) in the caller's transaction and returns the sorted
names and the server whose container must restart (None when nothing changed).
"""

from __future__ import annotations

import json
import time

import aiosqlite

from control.db.store import Store, fetch_one
from control.errors import BadRequest, NotFound
from control.keyring import Keyring
from control.users import records

MAX_VALUE = 4096
MAX_NAMES = 64
_FORBIDDEN = {'"': "a double quote", "'": "a single quote", "`": "a backtick", "#": "'#'"}


def problem(value: str) -> str | None:
    """Why `value` cannot be stored, or None (never repeats the value)."""
    if not value:
        return "must not be empty (null deletes it)"
    if len(value) > MAX_VALUE:
        return f"must be at most {MAX_VALUE} characters"
    if "\n" in value or "\r" in value:
        return "must be one line (no line break)"
    if "\0" in value:
        return "must not contain NUL"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "must not contain control characters"
    for char, what in _FORBIDDEN.items():
        if char in value:
            return f"must not contain {what}"
    if value != value.strip():
        return "must not start or end with blanks"
    return None


def check_changes(changes: dict[str, str | None], allowed: tuple[str, ...]) -> None:
    if not allowed:
        raise BadRequest("this tenant profile takes no secrets", code="no_secrets")
    if not changes:
        raise BadRequest('expected an object {"NAME": "value" or null, ...}')
    if len(changes) > MAX_NAMES:
        raise BadRequest(f"at most {MAX_NAMES} names at once")
    for name, value in changes.items():
        if name not in allowed:
            raise BadRequest(
                f"{name[:64]!r}: not a name this tenant profile allows ({', '.join(allowed)})",
                code="unknown_secret",
            )
        why = None if value is None else problem(value)
        if why is not None:
            raise BadRequest(f"{name}: {why}", code="bad_secret")


def stored_secrets(keyring: Keyring, ciphertext: str | None) -> dict[str, str]:
    if not ciphertext:
        return {}
    found = json.loads(keyring.decrypt(ciphertext))
    return {str(k): str(v) for k, v in found.items()}


async def change(
    conn: aiosqlite.Connection, keyring: Keyring, user_id: str, changes: dict[str, str | None]
) -> tuple[list[str], str | None]:
    row = await fetch_one(conn, "SELECT secrets_ciphertext FROM users WHERE id = ?", (user_id,))
    if row is None:
        raise NotFound(f"no user {user_id}")
    current = stored_secrets(keyring, row["secrets_ciphertext"])
    new = {**current, **{k: v for k, v in changes.items() if v is not None}}
    for name in [k for k, v in changes.items() if v is None]:
        new.pop(name, None)
    if new == current:
        return sorted(new), None
    ciphertext = keyring.encrypt(json.dumps(new, sort_keys=True)) if new else None
    touched = sorted(k for k in changes if new.get(k) != current.get(k))
    server = await records.set_secrets(conn, user_id, ciphertext, touched, time.time())
    return sorted(new), server


async def names(store: Store, keyring: Keyring, user_id: str) -> list[str]:
    row = await store.fetch_one("SELECT secrets_ciphertext FROM users WHERE id = ?", (user_id,))
    if row is None:
        raise NotFound(f"no user {user_id}")
    return sorted(stored_secrets(keyring, row["secrets_ciphertext"]))
