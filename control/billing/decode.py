"""Pure decoding of Stripe events into normalized billing facts.

Contract:
- `decode(event)` takes a Stripe event as parsed JSON (a plain mapping, never a
  StripeObject) and returns a `BillingFact`, or None for an event type we ignore.
  It does no I/O and reads no clock: the same event always gives the same fact.
- Handled types (`HANDLED_TYPES`):
  * `checkout.session.completed`: identity and linking only (status None). user_id is
    `client_reference_id`, falling back to `metadata.user_id`; subdomain is
    `metadata.subdomain`; customer and subscription ids from the session.
  * `customer.subscription.created` / `.updated`: the subscription's status, first
    item's price and `current_period_end` (on the item in current API versions, the
    legacy top-level field as a fallback); user_id/subdomain from its metadata.
  * `customer.subscription.deleted`: as above with status "deleted".
  * subscription events also carry `previous_status`: the status the subscription had
    before this change (`data.previous_attributes.status`), when the status changed.
  * `invoice.paid` / `invoice.payment_failed`: status None (an invoice carries no
    subscription state); subscription id from `parent.subscription_details.subscription`
    (legacy: top-level `subscription`); user_id/subdomain from the subscription metadata
    snapshot on the invoice (`parent.subscription_details.metadata`, legacy
    `subscription_details.metadata`); customer from `customer`.
- `state_at` is the event's `created`; `refreshed(fact, subscription, at)` replaces the
  subscription state with a freshly retrieved subscription (refetched=True).
- A handled event whose shape is wrong raises `DecodeError` (a ClawfleetError and a ValueError): the inbox
  keeps it and retries, so a decoder fix plus a restart still processes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from control.errors import ClawfleetError

CHECKOUT_COMPLETED = "checkout.session.completed"
SUBSCRIPTION_TYPES = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
    }
)
INVOICE_TYPES = frozenset({"invoice.paid", "invoice.payment_failed"})
HANDLED_TYPES = frozenset({CHECKOUT_COMPLETED, *SUBSCRIPTION_TYPES, *INVOICE_TYPES})


class DecodeError(ClawfleetError, ValueError):
    """A handled event type whose payload does not have the expected shape (also a
    ValueError: a malformed value, as callers of a decoder expect)."""

    code = "malformed_event"


@dataclass(frozen=True)
class BillingFact:
    event_id: str
    event_type: str
    # When the subscription state carried here was true: the event's `created`, or the
    # re-fetch time when the state came from GET /v1/subscriptions/{id}.
    state_at: int
    user_id: str | None
    subdomain: str | None
    customer_id: str | None
    subscription_id: str | None
    # Stripe's subscription status; "deleted" for customer.subscription.deleted; None
    # when the event carries no subscription state (checkout, invoices).
    status: str | None
    price_id: str | None
    current_period_end: int | None
    refetched: bool
    # The status before this event's change (`data.previous_attributes.status`): lets
    # the applier order two changes made within the same second (control/billing/rules.py).
    previous_status: str | None = None


def decode(event: Mapping[str, Any]) -> BillingFact | None:
    """The billing fact an event carries, or None for a type we ignore."""
    event_type = event.get("type")
    if event_type not in HANDLED_TYPES:
        return None
    event_id = _text(event.get("id"))
    created = _int(event.get("created"))
    if event_id is None or created is None:
        raise DecodeError("event without id or integer created")
    data = event.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    if not isinstance(obj, Mapping):
        raise DecodeError(f"{event_type} {event_id}: data.object is not an object")
    base = {"event_id": event_id, "event_type": str(event_type), "state_at": created}
    if event_type == CHECKOUT_COMPLETED:
        return _checkout(base, obj)
    if event_type in SUBSCRIPTION_TYPES:
        previous = _mapping(_mapping(data).get("previous_attributes"))
        fact = dataclasses.replace(
            _subscription(base, obj), previous_status=_text(previous.get("status"))
        )
        if event_type == "customer.subscription.deleted":
            # Stripe reports status "canceled" here; "deleted" tells the applier the
            # subscription is gone for good, not merely cancelled at a period end.
            fact = dataclasses.replace(fact, status="deleted")
        return fact
    return _invoice(base, obj)


def refreshed(fact: BillingFact, subscription: Mapping[str, Any], at: int) -> BillingFact:
    """`fact` with its subscription state replaced by a freshly retrieved subscription.

    Identity from the event wins (a checkout's client_reference_id is the authority on
    who paid); the subscription's metadata fills what the event lacked."""
    fresh = _subscription(
        {"event_id": fact.event_id, "event_type": fact.event_type, "state_at": at},
        subscription,
    )
    if fact.subscription_id is not None and fresh.subscription_id != fact.subscription_id:
        raise DecodeError(
            f"re-fetched subscription {fresh.subscription_id!r} is not {fact.subscription_id!r}"
        )
    return dataclasses.replace(
        fresh,
        user_id=fact.user_id or fresh.user_id,
        subdomain=fact.subdomain or fresh.subdomain,
        customer_id=fact.customer_id or fresh.customer_id,
        refetched=True,
    )


def _checkout(base: dict[str, Any], session: Mapping[str, Any]) -> BillingFact:
    metadata = _mapping(session.get("metadata"))
    return BillingFact(
        **base,
        user_id=_text(session.get("client_reference_id")) or _text(metadata.get("user_id")),
        subdomain=_text(metadata.get("subdomain")),
        customer_id=_ref(session.get("customer")),
        subscription_id=_ref(session.get("subscription")),
        status=None,
        price_id=None,
        current_period_end=None,
        refetched=False,
    )


def _subscription(base: dict[str, Any], sub: Mapping[str, Any]) -> BillingFact:
    sub_id = _text(sub.get("id"))
    status = _text(sub.get("status"))
    if sub_id is None or status is None:
        raise DecodeError(
            f"{base['event_type']} {base['event_id']}: subscription without id or status"
        )
    metadata = _mapping(sub.get("metadata"))
    item = _first_item(sub)
    price = item.get("price")
    # Current API versions put the period on each item; older ones on the subscription.
    period_end = _int(item.get("current_period_end", sub.get("current_period_end")))
    return BillingFact(
        **base,
        user_id=_text(metadata.get("user_id")),
        subdomain=_text(metadata.get("subdomain")),
        customer_id=_ref(sub.get("customer")),
        subscription_id=sub_id,
        status=status,
        price_id=_ref(price),
        current_period_end=period_end,
        refetched=False,
    )


def _invoice(base: dict[str, Any], invoice: Mapping[str, Any]) -> BillingFact:
    details = _mapping(_mapping(invoice.get("parent")).get("subscription_details"))
    legacy_details = _mapping(invoice.get("subscription_details"))
    sub_id = _ref(details.get("subscription")) or _ref(invoice.get("subscription"))
    metadata = _mapping(details.get("metadata")) or _mapping(legacy_details.get("metadata"))
    return BillingFact(
        **base,
        user_id=_text(metadata.get("user_id")),
        subdomain=_text(metadata.get("subdomain")),
        customer_id=_ref(invoice.get("customer")),
        subscription_id=sub_id,
        status=None,
        price_id=None,
        current_period_end=None,
        refetched=False,
    )


def _first_item(sub: Mapping[str, Any]) -> Mapping[str, Any]:
    items = _mapping(sub.get("items")).get("data")
    if isinstance(items, list) and items and isinstance(items[0], Mapping):
        return items[0]
    return {}


def _mapping(value: object) -> Mapping[str, Any]:
    # Stripe sends null for empty nested objects in places (metadata on some objects).
    return value if isinstance(value, Mapping) else {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _ref(value: object) -> str | None:
    """An id that may arrive as a string or as an expanded object with an `id`."""
    if isinstance(value, Mapping):
        return _text(value.get("id"))
    return _text(value)


def _int(value: object) -> int | None:
    # bool is an int in Python but never a Stripe timestamp.
    return value if isinstance(value, int) and not isinstance(value, bool) else None
