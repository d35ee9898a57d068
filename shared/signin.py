"""Sign-in tickets and sessions for a user's agent (docs/signin.md).

Contract: the control plane derives a per-user key (`signin_key`) from the user's
gateway token and hands it only to that user's worker, inside the signed spec. With it
the control plane signs short-lived, single-use tickets (`make_ticket`), and the
worker's verifier turns a valid ticket into a session cookie (`make_session`) that it
checks on every request (`check_session`). Everything is bound to one user id, so a
ticket or session of one user never opens another's agent, and rotating the gateway
token changes the key, which ends every session. Nothing here reads a clock or stores
anything: callers pass `now`, and the verifier remembers used ticket nonces until they
expire. Comparisons are constant-time; malformed input is simply invalid.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

KEY_CONTEXT = b"clawfleet-signin-v1"
COOKIE = "clawfleet_session"
TICKET_SECONDS = 300
SESSION_SECONDS = 30 * 86400
_ID = r"[a-z0-9][a-z0-9-]{0,62}"
_TICKET = re.compile(rf"t1\.({_ID})\.([0-9]{{1,12}})\.([0-9a-f]{{32}})\.([0-9a-f]{{64}})")
_SESSION = re.compile(rf"s1\.({_ID})\.([0-9]{{1,12}})\.([0-9a-f]{{32}})\.([0-9a-f]{{64}})")


def signin_key(gateway_token: str) -> str:
    """The user's sign-in key, as hex (what `ContainerSpec.signin_key` carries)."""
    return hmac.new(gateway_token.encode(), KEY_CONTEXT, hashlib.sha256).hexdigest()


def new_nonce() -> str:
    return secrets.token_hex(16)


def _mac(key: str, *parts: str) -> str:
    return hmac.new(bytes.fromhex(key), "|".join(parts).encode(), hashlib.sha256).hexdigest()


def make_ticket(key: str, user_id: str, expires_at: int, nonce: str) -> str:
    body = f"t1.{user_id}.{expires_at}.{nonce}"
    return f"{body}.{_mac(key, 'ticket', user_id, str(expires_at), nonce)}"


def check_ticket(key: str, user_id: str, ticket: str, now: float) -> str | None:
    """The ticket's nonce when it is valid for `user_id` at `now`, else None."""
    return _check(_TICKET, "ticket", key, user_id, ticket, now)


def make_session(key: str, user_id: str, expires_at: int, session_id: str) -> str:
    body = f"s1.{user_id}.{expires_at}.{session_id}"
    return f"{body}.{_mac(key, 'session', user_id, str(expires_at), session_id)}"


def check_session(key: str, user_id: str, value: str, now: float) -> bool:
    return _check(_SESSION, "session", key, user_id, value, now) is not None


def _check(
    pattern: re.Pattern[str], kind: str, key: str, user_id: str, value: str, now: float
) -> str | None:
    match = pattern.fullmatch(value) if value.isascii() else None
    if match is None or not key:
        return None
    owner, expires, nonce, mac = match.groups()
    expected = _mac(key, kind, owner, expires, nonce)
    if not hmac.compare_digest(expected, mac) or owner != user_id or int(expires) < now:
        return None
    return nonce
