"""Who a payment may act on.

Contract (`claim` is the pure rule, `resolve` applies it in the fact's transaction):
the user linked to the payment's subscription; else the user it names, only if that
user is linked to the same Stripe customer (a renewal) or was created by billing
without a customer; else a new user it creates (pending, with AWAITING as its error
until its subscription lets it run). It never takes over a user linked to another
customer or created by an operator (no customer): that is a `billing_conflict` event
plus `billing_conflict` on the named user, and the payment is linked to nobody. A new
user gets the subdomain the payment asks for unless a user has it or another buyer's
open sign-up Checkout reserves it (control/portal/checkouts.py), else one derived from
its id. A subscription whose user an operator deleted stays unlinked after the user
is purged (`subscriptions.held_user`). A provisional user the payment names (started
while its buyer paid, control/users/prestart.py) is adopted: linked as if the payment
had created it, nothing its container's spec covers changed unless the payment asks
for another subdomain (or rules.py records another plan); one withdrawn unpaid and not
yet purged makes `resolve` raise `Withdrawing`, so the outbox retries and then creates
the user anew. Users are written through control/users/records.py.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Literal

import aiosqlite

from control.billing import subscriptions
from control.billing.decode import BillingFact
from control.billing.subscriptions import END_STATUSES
from control.db import events
from control.db.store import Row, fetch_one
from control.errors import ServiceUnavailable
from control.keyring import Keyring
from control.users import prestart, records
from control.users.names import RESERVED_SUBDOMAINS
from shared.names import dns_label_ok, user_id_ok

STRIPE = prestart.CREATED_BY  # users.created_by of a user a payment created
AWAITING = "awaiting an active subscription"
Claim = Literal["link", "relink", "ignore", "conflict"]


class Withdrawing(ServiceUnavailable):
    """Retried by the outbox: the user the payment names is being purged."""

    code = "user_withdrawing"


@dataclass(frozen=True)
class Owner:
    """A user a payment names, as far as ownership goes."""

    customer: str | None
    created_by_stripe: bool
    subscription: str | None
    subscription_ended: bool


@dataclass(frozen=True)
class Payer:
    customer: str | None
    subscription: str | None
    subscription_ended: bool


def claim(owner: Owner, payer: Payer) -> tuple[Claim, str]:
    """Whether a payment may act on the user it names (not linked to its subscription
    yet), and why not. "relink": the same customer's new subscription replaces an
    ended one (a renewal); "ignore": an ended subscription of the same customer that
    the user has moved on from."""
    if owner.customer is None and not owner.created_by_stripe:
        return "conflict", "the user was created by an operator, not by a payment"
    if owner.customer is not None and payer.customer != owner.customer:
        return "conflict", f"the user belongs to Stripe customer {owner.customer}"
    if payer.subscription and owner.subscription and payer.subscription != owner.subscription:
        if payer.subscription_ended:
            return "ignore", "an ended subscription the user no longer has"
        if owner.subscription_ended:
            return "relink", "renewed with a new subscription"
        return "conflict", f"the user already has the live subscription {owner.subscription}"
    return "link", ""


def derive_subdomain(user_id: str) -> str:
    """A DNS label from a user id: lower case, runs of other characters as '-'."""
    label = re.sub(r"[^a-z0-9]+", "-", user_id.lower()).strip("-")[:50].strip("-")
    return label or "user"


async def resolve(
    conn: aiosqlite.Connection, fact: BillingFact, sub: Row | None, keyring: Keyring, now: float
) -> Row | None:
    """The user this fact may act on, linked to the fact's customer and subscription
    (None: nobody yet, or a refused claim)."""
    if fact.subscription_id:
        row = await fetch_one(
            conn, "SELECT * FROM users WHERE stripe_subscription_id = ?", (fact.subscription_id,)
        )
        if row is not None:
            return await _link(conn, row, fact, renew=False, now=now)
        if sub is not None and sub["held_user"]:
            return None  # its user was deleted by an operator: never brought back
    if not fact.user_id:
        return None
    row = await fetch_one(conn, "SELECT * FROM users WHERE id = ?", (fact.user_id,))
    if row is None:
        row = await _create_user(conn, fact, keyring, now)
        return await _link(conn, row, fact, renew=False, now=now) if row else None
    if prestart.is_provisional(row):
        row = await _adopt(conn, row, fact, now)
    verdict, why = claim(await _owner(conn, row), _payer(fact, sub))
    if verdict == "conflict":
        await _conflict(conn, row, fact, why, now)
    if verdict not in ("link", "relink"):
        return None
    return await _link(conn, row, fact, renew=verdict == "relink", now=now)


async def _adopt(conn: aiosqlite.Connection, user: Row, fact: BillingFact, now: float) -> Row:
    """The provisional user started while its buyer paid (control/users/prestart.py)
    becomes the one this payment created: same id, token and plan (the price's plan
    is then recorded by rules.py), the subdomain the payment asks for if it differs and
    is free. A withdrawn one is still being purged: the outbox retries, and then creates
    the user anew."""
    if user["state"] == "deprovisioned" and user["hold"] is None:
        # (An operator's delete is a hold: that user is linked, and stays deleted.)
        raise Withdrawing(f"user {user['id']} was withdrawn unpaid and is being purged")
    subdomain = user["subdomain"]
    wanted = fact.subdomain
    if wanted and wanted != subdomain and wanted not in RESERVED_SUBDOMAINS:
        free = dns_label_ok(wanted) and not await _subdomain_held(conn, wanted, user["id"], now)
        subdomain = wanted if free else subdomain
    await records.adopt(conn, user["id"], subdomain, now)
    await events.record(
        conn,
        "user_adopted",
        f"from Stripe event {fact.event_id}: the agent started at sign-up is now paid for",
        server_id=user["server_id"],
        user_id=user["id"],
        at=now,
    )
    adopted = await fetch_one(conn, "SELECT * FROM users WHERE id = ?", (user["id"],))
    assert adopted is not None
    return adopted


async def _owner(conn: aiosqlite.Connection, user: Row) -> Owner:
    sub = await subscriptions.get(conn, user["stripe_subscription_id"])
    return Owner(
        customer=user["stripe_customer_id"],
        created_by_stripe=user["created_by"] == STRIPE,
        subscription=user["stripe_subscription_id"],
        subscription_ended=sub is not None and sub["status"] in END_STATUSES,
    )


def _payer(fact: BillingFact, sub: Row | None) -> Payer:
    status = sub["status"] if sub is not None else fact.status
    return Payer(fact.customer_id, fact.subscription_id, status in END_STATUSES)


async def _conflict(
    conn: aiosqlite.Connection, user: Row, fact: BillingFact, why: str, now: float
) -> None:
    message = (
        f"Stripe event {fact.event_id} ({fact.event_type}) names this user for customer "
        f"{fact.customer_id}, subscription {fact.subscription_id}: not linked, {why}"
    )
    if user["billing_conflict"] == message:
        return  # the same fact again (at-least-once delivery): already shown
    await records.set_billing_conflict(conn, user["id"], message)
    await events.record(conn, "billing_conflict", message, user_id=user["id"], at=now)


async def _create_user(
    conn: aiosqlite.Connection, fact: BillingFact, keyring: Keyring, now: float
) -> Row | None:
    assert fact.user_id is not None
    if not user_id_ok(fact.user_id):
        await events.record(
            conn,
            "billing_error",
            f"event {fact.event_id}: user id {fact.user_id!r} is not valid",
            at=now,
        )
        return None
    subdomain = await _free_subdomain(conn, fact.subdomain, fact.user_id, now)
    token = keyring.encrypt(keyring.new_secret())
    # Not placed until its subscription says so.
    await records.insert(
        conn, fact.user_id, subdomain, "default", token, now=now, created_by=STRIPE, error=AWAITING
    )
    await events.record(
        conn,
        "user_created",
        f"from Stripe event {fact.event_id}, subdomain {subdomain}",
        user_id=fact.user_id,
        at=now,
    )
    return await fetch_one(conn, "SELECT * FROM users WHERE id = ?", (fact.user_id,))


async def _free_subdomain(
    conn: aiosqlite.Connection, requested: str | None, user_id: str, now: float
) -> str:
    candidates = []
    if requested and dns_label_ok(requested) and requested not in RESERVED_SUBDOMAINS:
        candidates.append(requested)
    base = derive_subdomain(user_id)
    candidates += [base] if base not in RESERVED_SUBDOMAINS else []
    candidates += [f"{base}-{i}" for i in range(2, 50)]
    for label in candidates:
        if not await _subdomain_held(conn, label, user_id, now):
            return label
    return f"{base[:40]}-{int(time.time())}"


async def _subdomain_held(conn: aiosqlite.Connection, label: str, user_id: str, now: float) -> bool:
    """A user has the label, or another buyer's open sign-up Checkout reserves it
    (control/portal/checkouts.py: read here, written only there)."""
    row = await fetch_one(
        conn,
        "SELECT 1 FROM users WHERE subdomain = ? UNION ALL SELECT 1 FROM checkouts "
        "WHERE subdomain = ? AND state = 'open' AND expires_at > ? AND user_id != ?",
        (label, label, now, user_id),
    )
    return row is not None


async def _link(
    conn: aiosqlite.Connection, user: Row, fact: BillingFact, *, renew: bool, now: float
) -> Row:
    """Links the user to the fact's customer and subscription where it has none yet,
    or (`renew`) to its own customer's new subscription when its old one ended."""
    customer = user["stripe_customer_id"] or fact.customer_id
    subscription = user["stripe_subscription_id"] or fact.subscription_id
    if renew:
        subscription = fact.subscription_id
    if (customer, subscription) == (user["stripe_customer_id"], user["stripe_subscription_id"]):
        return user
    await records.link_billing(conn, user["id"], customer, subscription, now)
    linked = await fetch_one(conn, "SELECT * FROM users WHERE id = ?", (user["id"],))
    assert linked is not None
    return linked
