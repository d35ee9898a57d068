"""What makes a Stripe webhook delivery acceptable, before anything is stored.

Contract: `verify_delivery(payload, signature, endpoint, now)` returns the event (a
JSON object with a string `id`, a string `type` and an integer `created`) or raises a
domain error, writing nothing:
- 503 `not_configured` when the endpoint has no secret;
- 400 `missing_signature`; `malformed_event` for a body that is not UTF-8, not a JSON
  object, not a snapshot event, or lacks a valid id, type or created;
- 400 `bad_signature` unless the `stripe` library finds the v1 HMAC-SHA256 over
  "{t}.{body}" with the secret (a header that is not ASCII, or whose `t` is not plain
  digits, is a `bad_signature` before it reaches the library);
- 400 `stale_event` / `future_event` unless now - tolerance <= t <= now + tolerance, in
  whole seconds, both edges inclusive;
- 400 `wrong_mode` unless the event's `livemode` is the endpoint's, and `wrong_account`
  when the event carries an `account` other than the endpoint's `account_id` (without
  one, events that carry an account are refused).
The secret never appears in an error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import stripe

from control.errors import BadRequest, ClawfleetError

_TIMESTAMP = re.compile(r"[0-9]{1,12}")


class Unavailable(ClawfleetError):
    """The event could not be stored: a 5xx makes Stripe deliver it again later."""

    status = 503
    code = "unavailable"


@dataclass(frozen=True)
class Endpoint:
    """This deployment's webhook endpoint, as Stripe knows it."""

    secret: str = field(repr=False)
    tolerance: int
    livemode: bool
    account_id: str


def verify_delivery(
    payload: bytes, signature: str | None, endpoint: Endpoint, now: int
) -> dict[str, Any]:
    """The authentic, fresh event of this deployment in `payload`, else a domain error."""
    if not endpoint.secret.strip():
        raise Unavailable("STRIPE_WEBHOOK_SECRET is not configured", code="not_configured")
    if not signature:
        raise BadRequest("missing Stripe-Signature header", code="missing_signature")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8", code="malformed_event") from None
    # A non-ASCII header would make the library's comparison raise TypeError.
    timestamp = _header_timestamp(signature) if signature.isascii() else None
    if timestamp is None or not _authentic(text, signature, endpoint.secret):
        raise BadRequest(
            "Stripe-Signature does not match the body with this endpoint's signing "
            "secret (wrong STRIPE_WEBHOOK_SECRET, or the body was altered)",
            code="bad_signature",
        )
    check_age(timestamp, now, endpoint.tolerance)
    event = _parse_event(text)
    _check_origin(event, endpoint)
    return event


def _authentic(text: str, signature: str, secret: str) -> bool:
    try:
        stripe.WebhookSignature.verify_header(text, signature, secret, None)
    except stripe.SignatureVerificationError:
        return False
    return True


def check_age(timestamp: int, now: int, tolerance: int) -> None:
    # Whole seconds on both sides: an event exactly `tolerance` s old is accepted
    # whatever the fraction of the current second (the library compares floats).
    if timestamp < now - tolerance:
        raise BadRequest(
            f"Stripe-Signature timestamp is more than {tolerance} s old "
            "(replayed delivery or clock skew)",
            code="stale_event",
        )
    if timestamp > now + tolerance:
        raise BadRequest(
            f"Stripe-Signature timestamp is more than {tolerance} s in the future "
            "(check this host's clock)",
            code="future_event",
        )


def _check_origin(event: Mapping[str, Any], endpoint: Endpoint) -> None:
    livemode = event.get("livemode")
    if livemode is not endpoint.livemode:
        expected, got = _mode(endpoint.livemode), _mode(livemode)
        raise BadRequest(
            f"a {got} event reached a {expected} deployment (STRIPE_LIVEMODE, "
            "STRIPE_SECRET_KEY); check which endpoint's secret is configured",
            code="wrong_mode",
        )
    account = event.get("account")
    if account is not None and account != endpoint.account_id:
        expected = endpoint.account_id or "none (STRIPE_ACCOUNT_ID is not set)"
        raise BadRequest(
            f"event of Stripe account {str(account)[:64]!r}, expected {expected}",
            code="wrong_account",
        )


def _header_timestamp(header: str) -> int | None:
    """`t` as the library reads it (the first item whose key is exactly `t`), or None
    unless it is plain decimal digits."""
    for item in header.split(","):
        key, _, value = item.partition("=")
        if key == "t":
            return int(value) if _TIMESTAMP.fullmatch(value) else None
    return None


def _mode(livemode: object) -> str:
    if livemode is True:
        return "live-mode"
    return "test-mode" if livemode is False else "mode-less"


def _parse_event(text: str) -> dict[str, Any]:
    try:
        event = json.loads(text)
    except ValueError:
        raise BadRequest("body is not JSON", code="malformed_event") from None
    if not isinstance(event, dict):
        raise BadRequest("body is not a JSON object", code="malformed_event")
    if event.get("object", "event") != "event":
        # e.g. a v2 thin event notification sent to a snapshot-event endpoint.
        raise BadRequest(
            f"not a snapshot event (object {event.get('object')!r})", code="malformed_event"
        )
    event_id, event_type, created = event.get("id"), event.get("type"), event.get("created")
    if not isinstance(event_id, str) or not event_id or len(event_id) > 255:
        raise BadRequest("event has no valid id", code="malformed_event")
    if not isinstance(event_type, str) or not event_type:
        raise BadRequest("event has no valid type", code="malformed_event")
    if not isinstance(created, int) or isinstance(created, bool):
        raise BadRequest("event has no integer created", code="malformed_event")
    return event
