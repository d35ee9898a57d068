"""`clawfleet simulate-payment`: what Stripe would send when a customer pays, signed
and delivered to the control plane's webhook, so that a local fleet can be tried
without a Stripe account.

Contract: with `STRIPE_WEBHOOK_SECRET` (else ./data/stripe_webhook_secret, written by
`make run`) it signs a `checkout.session.completed` and then a
`customer.subscription.created` event (status active) exactly as Stripe does (v1
scheme, HMAC-SHA256 over "{t}.{body}") and POSTs them, in that order, to
`<url>/v1/stripe/webhook`; no admin token is needed. The same user always gets the same
customer and subscription ids. The price id is the plan's first Stripe price in `PLANS`,
else `price_clawfleet_<plan>`. The events and their signature come from
control/billing/simulated.py, which the portal's Checkout stand-in uses too. A missing secret, a bad `--plan` or a bad `PLANS` is
EXIT_USAGE.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path
from typing import Any

from control.billing.simulated import Purchase, purchase_events, signed_delivery
from control.cli.client import EXIT_OK, EXIT_USAGE, Api, CliError
from control.cli.render import print_json, table, wants_json
from control.plans import PlanError, parse_plans

DEFAULT_WEBHOOK_SECRET_FILE = Path("data/stripe_webhook_secret")
_PLAN_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


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


def simulated_events(user_id: str, plan: str, price_id: str, now: int) -> list[dict[str, Any]]:
    """A completed Checkout Session, then its subscription being created (active)."""
    # Imported here: control.billing.rules pulls in the store (aiosqlite, cryptography), which
    # the admin commands do not need and a machine with only the agent extras lacks.
    from control.billing.rules import derive_subdomain

    subdomain = derive_subdomain(user_id)
    purchase = Purchase(user_id, subdomain, plan, price_id, f"{subdomain}@example.com")
    return purchase_events(purchase, now)


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
    payload, headers = signed_delivery(secret, event, int(time.time()))
    headers["User-Agent"] = "clawfleet-simulate-payment (Stripe/1.0 compatible)"
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
