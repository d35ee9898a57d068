"""`clawfleet simulate-payment`: what Stripe would send when a customer pays, signed
and delivered to the control plane's webhook, so that a local fleet can be tried
without a Stripe account.

Contract: with `STRIPE_WEBHOOK_SECRET` (else ./data/stripe_webhook_secret, written by
`make run`) it signs a `checkout.session.completed` and then a
`customer.subscription.created` event (status active) exactly as Stripe does (v1
scheme, HMAC-SHA256 over "{t}.{body}") and POSTs them, in that order, to
`<url>/v1/stripe/webhook`; no admin token is needed. The same user always gets the same
customer and subscription ids. The price id is the plan's first Stripe price in `PLANS`,
else `price_clawfleet_<plan>`. A missing secret, a bad `--plan` or a bad `PLANS` is
EXIT_USAGE.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

from control.cli.client import EXIT_OK, EXIT_USAGE, Api, CliError
from control.cli.render import print_json, table, wants_json
from control.plans import PlanError, parse_plans

DEFAULT_WEBHOOK_SECRET_FILE = Path("data/stripe_webhook_secret")
# What tests/stripe_events.py and docs/stripe.md use; the inbox accepts any version.
STRIPE_API_VERSION = "2025-08-27.basil"
_PLAN_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


def stripe_signature(secret: str, payload: bytes, timestamp: int) -> str:
    """The `Stripe-Signature` header value Stripe sends (v1 scheme)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def price_for(plan: str, plans_text: str) -> str:
    """The plan's first Stripe price in PLANS, else a placeholder naming the plan."""
    try:
        plans = parse_plans(plans_text)
    except PlanError as exc:
        raise CliError(EXIT_USAGE, f"PLANS: {exc}") from None
    known = plans.get(plan)
    if known is not None and known.stripe_price_ids:
        return known.stripe_price_ids[0]
    return f"price_clawfleet_{plan}"


def _sim_id(user_id: str) -> str:
    # The same user always gets the same customer and subscription, so simulating
    # again (say with another --plan) updates one subscription instead of adding one.
    return hashlib.sha256(user_id.encode()).hexdigest()[:24]


def simulated_events(user_id: str, plan: str, price_id: str, now: int) -> list[dict[str, Any]]:
    """A completed Checkout Session, then its subscription being created (active)."""
    # Imported here: control.billing.rules pulls in the store (aiosqlite, cryptography), which
    # the admin commands do not need and a machine with only the agent extras lacks.
    from control.billing.rules import derive_subdomain

    subdomain = derive_subdomain(user_id)
    customer, subscription = f"cus_sim_{_sim_id(user_id)}", f"sub_sim_{_sim_id(user_id)}"
    metadata = {"user_id": user_id, "subdomain": subdomain}
    session = {
        "id": f"cs_test_sim_{secrets.token_hex(12)}",
        "object": "checkout.session",
        "amount_subtotal": 2000,
        "amount_total": 2000,
        "cancel_url": "https://example.com/cancel",
        "client_reference_id": user_id,
        "created": now,
        "currency": "usd",
        "customer": customer,
        "customer_details": {"email": f"{subdomain}@example.com", "name": None},
        "expires_at": now + 86400,
        "livemode": False,
        "metadata": metadata,
        "mode": "subscription",
        "payment_status": "paid",
        "status": "complete",
        "subscription": subscription,
        "success_url": "https://example.com/success",
        "url": None,
    }
    sub = {
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
        "items": _items(user_id, subscription, plan, price_id, now),
        "latest_invoice": None,
        "livemode": False,
        "metadata": metadata,
        "start_date": now,
        "status": "active",
    }
    return [
        _event("checkout.session.completed", session, now),
        _event("customer.subscription.created", sub, now),
    ]


def _items(user_id: str, subscription: str, plan: str, price_id: str, now: int) -> dict[str, Any]:
    """The subscription's item list: one item of `price_id`, billed monthly."""
    item = {
        "id": f"si_sim_{_sim_id(user_id)}",
        "object": "subscription_item",
        "created": now,
        # Current API versions keep the billing period on the item.
        "current_period_start": now,
        "current_period_end": now + 30 * 86400,
        "metadata": {},
        "price": {
            "id": price_id,
            "object": "price",
            "active": True,
            "currency": "usd",
            "livemode": False,
            "lookup_key": None,
            "metadata": {"plan": plan},
            "nickname": plan,
            "product": f"prod_sim_{plan}",
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


def _event(kind: str, obj: dict[str, Any], now: int) -> dict[str, Any]:
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


def _webhook_secret() -> str:
    secret = os.environ.get("STRIPE_WEBHOOK_SECRET", "").strip()
    if not secret and DEFAULT_WEBHOOK_SECRET_FILE.is_file():
        secret = DEFAULT_WEBHOOK_SECRET_FILE.read_text().strip()  # written by `make run`
    if not secret:
        raise CliError(
            EXIT_USAGE,
            "STRIPE_WEBHOOK_SECRET is not set: use the control plane's webhook signing secret",
        )
    return secret


def _deliver(api: Api, secret: str, event: dict[str, Any]) -> dict[str, Any]:
    """POSTs one event signed as Stripe signs it; what the webhook answered."""
    # Pretty-printed like Stripe's deliveries; the signature covers these exact bytes.
    payload = json.dumps(event, indent=2).encode()
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "Stripe-Signature": stripe_signature(secret, payload, int(time.time())),
        "User-Agent": "clawfleet-simulate-payment (Stripe/1.0 compatible)",
    }
    answer = api.send("POST", "/v1/stripe/webhook", payload, headers, admin=False)
    return {"event_id": event["id"], "type": event["type"], "response": answer}


def simulate_payment(api: Api, args: argparse.Namespace) -> int:
    secret = _webhook_secret()
    if not _PLAN_NAME.fullmatch(args.plan):
        raise CliError(EXIT_USAGE, f"--plan: 1-32 characters a-z 0-9 _ -, got {args.plan!r}")
    price = price_for(args.plan, os.environ.get("PLANS", ""))
    events = simulated_events(args.user_id, args.plan, price, int(time.time()))
    deliveries = [_deliver(api, secret, event) for event in events]
    subscription = events[1]["data"]["object"]
    summary = {
        "user_id": args.user_id,
        "subdomain": subscription["metadata"]["subdomain"],
        "plan": args.plan,
        "price_id": price,
        "customer": subscription["customer"],
        "subscription": subscription["id"],
        "deliveries": deliveries,
    }
    if wants_json(args):
        print_json(summary)
        return EXIT_OK
    rows = [
        [d["type"], d["event_id"], "duplicate" if d["response"].get("duplicate") else "received"]
        for d in deliveries
    ]
    print(table(("EVENT", "ID", "RESULT"), rows))
    print(
        f"user {args.user_id} (subdomain {summary['subdomain']}): {summary['customer']}, "
        f"{summary['subscription']} active, price {price}"
    )
    return EXIT_OK
