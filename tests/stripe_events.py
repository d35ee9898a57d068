"""Realistic Stripe objects and events, signed exactly the way Stripe signs them.

Objects follow the current API shapes of the reference fixtures in
/work/shared/reference/stripe (trimmed to the fields that matter plus enough of the
rest to look like the real thing): a subscription's billing period is on its items
(`items.data[].current_period_end`), an invoice's subscription under
`parent.subscription_details.subscription`.

Signing (https://docs.stripe.com/webhooks#verify-manually): the header is
`Stripe-Signature: t=<unix ts>,v1=<hex HMAC-SHA256 of "<t>.<raw body>" keyed with the
endpoint's signing secret>`; test-mode deliveries also carry a `v0=` signature made
with a different key, which verifiers must ignore. Bodies are pretty-printed JSON, as
Stripe sends them, so a verifier that re-serializes the body fails.

    body = encode(event("customer.subscription.updated", subscription(status="past_due")))
    headers = {"Stripe-Signature": sign(body)}
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import json
import secrets
import time
from typing import Any

Json = dict[str, Any]

WEBHOOK_SECRET = "whsec_test_" + "c" * 32
API_KEY = "sk_test_" + "d" * 40
API_VERSION = "2025-08-27.basil"

CUSTOMER = "cus_QXg1o8vcGmoR32"
SUBSCRIPTION = "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw"
PRICE = "price_1PgafmB7WZ01zgkW6dKueIc5"
PERIOD_END = 1_767_225_600
_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):04d}{secrets.token_hex(8)}"


def sign(
    payload: bytes | str,
    secret: str = WEBHOOK_SECRET,
    timestamp: int | None = None,
    *,
    v0: bool = True,
) -> str:
    """The `Stripe-Signature` header Stripe sends for `payload`."""
    body = payload.encode() if isinstance(payload, str) else payload
    t = int(time.time()) if timestamp is None else timestamp
    v1 = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    header = f"t={t},v1={v1}"
    if v0:
        header += f",v0={hashlib.sha256(body).hexdigest()}"
    return header


def encode(event: Json) -> bytes:
    """The body as Stripe sends it (pretty-printed, 2-space indent)."""
    return json.dumps(event, indent=2).encode()


def event(
    type_: str,
    obj: Json,
    *,
    id_: str | None = None,
    created: int | None = None,
    previous_attributes: Json | None = None,
) -> Json:
    """A snapshot event (`object: "event"`) wrapping `obj`."""
    data: Json = {"object": obj}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    return {
        "id": id_ or new_id("evt"),
        "object": "event",
        "api_version": API_VERSION,
        "created": int(time.time()) if created is None else created,
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": new_id("req"), "idempotency_key": secrets.token_hex(16)},
        "type": type_,
    }


def checkout_session(
    *,
    client_reference_id: str | None = "user-1",
    metadata: dict[str, str] | None = None,
    customer: str | None = CUSTOMER,
    subscription_id: str | None = SUBSCRIPTION,
) -> Json:
    """A completed subscription-mode Checkout Session."""
    session_id = new_id("cs_test")
    return {
        "id": session_id,
        "object": "checkout.session",
        "after_expiration": None,
        "allow_promotion_codes": None,
        "amount_subtotal": 2000,
        "amount_total": 2000,
        "automatic_tax": {"enabled": False, "liability": None, "status": None, "provider": None},
        "billing_address_collection": None,
        "cancel_url": "https://example.com/cancel",
        "client_reference_id": client_reference_id,
        "client_secret": None,
        "created": 1_721_954_000,
        "currency": "usd",
        "customer": customer,
        "customer_creation": "always",
        "customer_details": {
            "address": {"country": "DE", "postal_code": None},
            "email": "example@example.com",
            "name": "Example Customer",
            "phone": None,
            "tax_exempt": "none",
            "tax_ids": [],
        },
        "customer_email": None,
        "expires_at": 1_722_040_400,
        "invoice": "in_1Pgc6tB7WZ01zgkWu9fdqL6I",
        "livemode": False,
        "locale": None,
        "metadata": {} if metadata is None else metadata,
        "mode": "subscription",
        "payment_intent": None,
        "payment_method_types": ["card"],
        "payment_status": "paid",
        "status": "complete",
        "submit_type": None,
        "subscription": subscription_id,
        "success_url": "https://example.com/success",
        "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        "ui_mode": "hosted",
        "url": None,
    }


def subscription(
    *,
    id_: str = SUBSCRIPTION,
    status: str = "active",
    customer: str = CUSTOMER,
    price: str = PRICE,
    metadata: dict[str, str] | None = None,
    current_period_end: int = PERIOD_END,
) -> Json:
    """A subscription with one item (current API: the period is on the item)."""
    return {
        "id": id_,
        "object": "subscription",
        "application": None,
        "application_fee_percent": None,
        "automatic_tax": {"enabled": False, "liability": None, "disabled_reason": None},
        "billing_cycle_anchor": current_period_end - 30 * 86400,
        "billing_mode": {"type": "classic"},
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": "charge_automatically",
        "created": 1_721_954_054,
        "currency": "usd",
        "customer": customer,
        "days_until_due": None,
        "default_payment_method": "pm_1Pgc6qB7WZ01zgkWcard",
        "discounts": [],
        "ended_at": None,
        "items": {
            "object": "list",
            "data": [
                {
                    "id": "si_QXhVnC2h0Jczwc",
                    "object": "subscription_item",
                    "created": 1_721_954_054,
                    "current_period_end": current_period_end,
                    "current_period_start": current_period_end - 30 * 86400,
                    "discounts": [],
                    "metadata": {},
                    "price": {
                        "id": price,
                        "object": "price",
                        "active": True,
                        "billing_scheme": "per_unit",
                        "currency": "usd",
                        "livemode": False,
                        "lookup_key": None,
                        "metadata": {},
                        "nickname": None,
                        "product": "prod_QXg1hqf4jFNsqG",
                        "recurring": {
                            "interval": "month",
                            "interval_count": 1,
                            "meter": None,
                            "usage_type": "licensed",
                            "trial_period_days": None,
                        },
                        "tax_behavior": "unspecified",
                        "type": "recurring",
                        "unit_amount": 2000,
                        "unit_amount_decimal": "2000",
                    },
                    "quantity": 1,
                    "subscription": id_,
                    "tax_rates": [],
                }
            ],
            "has_more": False,
            "url": f"/v1/subscription_items?subscription={id_}",
        },
        "latest_invoice": "in_1Pgc6tB7WZ01zgkWu9fdqL6I",
        "livemode": False,
        "metadata": {} if metadata is None else metadata,
        "pause_collection": None,
        "pending_setup_intent": None,
        "pending_update": None,
        "schedule": None,
        "start_date": 1_721_954_054,
        "status": status,
        "test_clock": None,
        "trial_end": None,
        "trial_start": None,
    }


def invoice(
    *,
    subscription_id: str | None = SUBSCRIPTION,
    customer: str = CUSTOMER,
    subscription_metadata: dict[str, str] | None = None,
    legacy: bool = False,
    paid: bool = True,
) -> Json:
    """A subscription invoice. Current API: the subscription under
    `parent.subscription_details`; `legacy=True`: the pre-2025 top-level fields."""
    inv: Json = {
        "id": new_id("in"),
        "object": "invoice",
        "account_country": "DE",
        "amount_due": 2000,
        "amount_paid": 2000 if paid else 0,
        "amount_remaining": 0 if paid else 2000,
        "attempt_count": 1,
        "attempted": True,
        "billing_reason": "subscription_cycle",
        "collection_method": "charge_automatically",
        "created": 1_721_954_054,
        "currency": "usd",
        "customer": customer,
        "customer_email": "example@example.com",
        "lines": {
            "object": "list",
            "data": [
                {
                    "id": "il_1Pgc6sB7WZ01zgkWFnxLrLCq",
                    "object": "line_item",
                    "amount": 2000,
                    "currency": "usd",
                    "description": "1 \u00d7 Clawfleet agent (at $20.00 / month)",
                    "period": {"end": PERIOD_END, "start": PERIOD_END - 30 * 86400},
                    "quantity": 1,
                    "parent": {
                        "type": "subscription_item_details",
                        "subscription_item_details": {
                            "invoice_item": None,
                            "proration": False,
                            "proration_details": {"credited_items": None},
                            "subscription": subscription_id,
                            "subscription_item": "si_QXhVnC2h0Jczwc",
                        },
                    },
                    "pricing": {
                        "type": "price_details",
                        "price_details": {"price": PRICE, "product": "prod_QXg1hqf4jFNsqG"},
                        "unit_amount_decimal": "2000",
                    },
                }
            ],
            "has_more": False,
            "url": "/v1/invoices/in_1Pgc6tB7WZ01zgkWu9fdqL6I/lines",
        },
        "livemode": False,
        "metadata": {},
        "period_end": PERIOD_END - 30 * 86400,
        "period_start": PERIOD_END - 60 * 86400,
        "status": "paid" if paid else "open",
        "total": 2000,
    }
    details = {"metadata": subscription_metadata, "subscription": subscription_id}
    if legacy:
        inv["subscription"] = subscription_id
        inv["subscription_details"] = {"metadata": subscription_metadata}
        inv["parent"] = None
    else:
        inv["parent"] = {
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": details,
        }
    return copy.deepcopy(inv)
