"""What Stripe sends when a customer pays, built and signed here for the two places that
stand in for Stripe without an account: `clawfleet simulate-payment` (control/cli) and
the portal's local stand-ins for the hosted Checkout page and the billing portal
(control/portal/stand_in.py).

Contract: `purchase_events(purchase, now)` is a completed Checkout Session
(`checkout.session.completed`, payment_status paid, the purchase's session id,
client_reference_id, metadata.user_id and metadata.subdomain, customer email) and then
its subscription being created (`customer.subscription.created`, status active, one
monthly item of the plan's price), in Stripe's wire format and in that order;
`cancellation_event` is that subscription's `customer.subscription.deleted` (canceled
at once, as from the billing portal). The same
user always gets the same customer and subscription ids, so buying again updates one
subscription instead of adding one. `signed_delivery` gives the exact bytes and headers
Stripe posts: pretty-printed JSON and `Stripe-Signature` in the v1 scheme (HMAC-SHA256
of "{t}.{body}" under the webhook's signing secret), which the webhook verifies like any
other delivery: nothing here bypasses it. Pure and light (no store, no HTTP), so the
command line can import it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

# What tests/stripe_events.py and docs/stripe.md use; the inbox accepts any version.
STRIPE_API_VERSION = "2025-08-27.basil"


@dataclass(frozen=True)
class Purchase:
    user_id: str  # client_reference_id and metadata.user_id
    subdomain: str
    plan: str
    price_id: str
    email: str
    session_id: str = ""  # cs_...; empty: a new random test id
    success_url: str = "https://example.com/success"
    cancel_url: str = "https://example.com/cancel"


def stripe_signature(secret: str, payload: bytes, timestamp: int) -> str:
    """The `Stripe-Signature` header value Stripe sends (v1 scheme)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def signed_delivery(secret: str, event: dict[str, Any], now: int) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of one webhook delivery, signed as Stripe signs it."""
    # Pretty-printed like Stripe's deliveries; the signature covers these exact bytes.
    payload = json.dumps(event, indent=2).encode()
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "Stripe-Signature": stripe_signature(secret, payload, now),
    }
    return payload, headers


def sim_id(user_id: str) -> str:
    # The same user always gets the same customer and subscription, so paying again
    # (say with another plan) updates one subscription instead of adding one.
    return hashlib.sha256(user_id.encode()).hexdigest()[:24]


def purchase_events(purchase: Purchase, now: int) -> list[dict[str, Any]]:
    """A completed Checkout Session, then its subscription being created (active)."""
    p = purchase
    customer, subscription = f"cus_sim_{sim_id(p.user_id)}", f"sub_sim_{sim_id(p.user_id)}"
    metadata = {"user_id": p.user_id, "subdomain": p.subdomain}
    session = {
        "id": p.session_id or f"cs_test_sim_{secrets.token_hex(12)}",
        "object": "checkout.session",
        "amount_subtotal": 2000,
        "amount_total": 2000,
        "cancel_url": p.cancel_url,
        "client_reference_id": p.user_id,
        "created": now,
        "currency": "usd",
        "customer": customer,
        "customer_details": {"email": p.email, "name": None},
        "customer_email": p.email,
        "expires_at": now + 86400,
        "livemode": False,
        "metadata": metadata,
        "mode": "subscription",
        "payment_status": "paid",
        "status": "complete",
        "subscription": subscription,
        "success_url": p.success_url,
        "url": None,
    }
    return [
        event("checkout.session.completed", session, now),
        event("customer.subscription.created", _subscription(p, customer, subscription, now), now),
    ]


def cancellation_event(
    purchase: Purchase, customer: str, subscription: str, now: int
) -> dict[str, Any]:
    """`customer.subscription.deleted`: what Stripe sends when the customer cancels at
    once in the billing portal (status canceled, ended now)."""
    sub = _subscription(purchase, customer, subscription, now)
    sub |= {"status": "canceled", "canceled_at": now, "ended_at": now}
    return event("customer.subscription.deleted", sub, now)


def _subscription(p: Purchase, customer: str, subscription: str, now: int) -> dict[str, Any]:
    """An active subscription to the purchase's price, as Stripe shows it."""
    return {
        "id": subscription,
        "object": "subscription",
        "billing_cycle_anchor": now,
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "collection_method": "charge_automatically",
        "created": now,
        "currency": "usd",
        "customer": customer,
        "ended_at": None,
        "items": _items(p, subscription, now),
        "latest_invoice": None,
        "livemode": False,
        "metadata": {"user_id": p.user_id, "subdomain": p.subdomain},
        "start_date": now,
        "status": "active",
    }


def _items(p: Purchase, subscription: str, now: int) -> dict[str, Any]:
    """The subscription's item list: one item of the plan's price, billed monthly."""
    item = {
        "id": f"si_sim_{sim_id(p.user_id)}",
        "object": "subscription_item",
        "created": now,
        # Current API versions keep the billing period on the item.
        "current_period_start": now,
        "current_period_end": now + 30 * 86400,
        "metadata": {},
        "price": {
            "id": p.price_id,
            "object": "price",
            "active": True,
            "currency": "usd",
            "livemode": False,
            "lookup_key": None,
            "metadata": {"plan": p.plan},
            "nickname": p.plan,
            "product": f"prod_sim_{p.plan}",
            "recurring": {"interval": "month", "interval_count": 1},
            "type": "recurring",
            "unit_amount": 2000,
        },
        "quantity": 1,
        "subscription": subscription,
    }
    return {
        "object": "list",
        "data": [item],
        "has_more": False,
        "url": f"/v1/subscription_items?subscription={subscription}",
    }


def event(kind: str, obj: dict[str, Any], now: int) -> dict[str, Any]:
    """An event of `kind` about `obj`, with a new random id, as Stripe wraps it."""
    return {
        "id": f"evt_sim_{secrets.token_hex(12)}",
        "object": "event",
        "api_version": STRIPE_API_VERSION,
        "created": now,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": kind,
    }
