"""Billing facts → users: who a payment is for, which plan it buys, and whether the
user should run, be suspended or be deprovisioned.

Contract:
- `target` is the pure rule from a subscription's status to what the user should be.
- `apply_fact` runs inside one store transaction and is idempotent (the webhook
  outbox delivers at least once). Subscription state is kept per subscription in
  `subscriptions`, and a fact older (by `state_at`) than what is stored never
  overrides it, so delivery order does not matter. Identity and linking (a checkout)
  are not subscription state: a checkout that arrives after its subscription events
  links the user to the state those events left.
- An unknown price is an error shown on the user and in the event log; the user is
  not started. Nothing here raises for bad billing data: retrying would not fix it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Literal, Protocol

import aiosqlite

from control import events
from control.keyring import Keyring
from control.plans import Plan
from control.store import Row, fetch_one
from control.users import RESERVED_SUBDOMAINS, SUBDOMAIN, USER_ID, bump_generation

Target = Literal["run", "suspend", "deprovision", "wait"]
RUN_STATUSES = ("active", "trialing")
SUSPEND_STATUSES = ("unpaid", "paused")
END_STATUSES = ("canceled", "incomplete_expired", "deleted")


class Fact(Protocol):
    """What control/stripe_inbox.py's BillingFact carries."""

    @property
    def event_id(self) -> str: ...
    @property
    def event_type(self) -> str: ...
    @property
    def state_at(self) -> int: ...
    @property
    def user_id(self) -> str | None: ...
    @property
    def subdomain(self) -> str | None: ...
    @property
    def customer_id(self) -> str | None: ...
    @property
    def subscription_id(self) -> str | None: ...
    @property
    def status(self) -> str | None: ...
    @property
    def price_id(self) -> str | None: ...
    @property
    def current_period_end(self) -> int | None: ...


def target(status: str | None, past_due_since: float | None, now: float, grace: float) -> Target:
    if status in RUN_STATUSES:
        return "run"
    if status == "past_due":
        since = past_due_since if past_due_since is not None else now
        return "run" if now - since < grace else "suspend"
    if status in SUSPEND_STATUSES:
        return "suspend"
    if status in END_STATUSES:
        return "deprovision"
    return "wait"  # incomplete, or nothing known yet


def derive_subdomain(user_id: str) -> str:
    """A DNS label from a user id: lower case, runs of other characters as '-'."""
    label = re.sub(r"[^a-z0-9]+", "-", user_id.lower()).strip("-")[:50].strip("-")
    return label or "user"


SYNTHETIC_PRICE_PREFIX = "price_clawfleet_"


def plan_for_price(plans: dict[str, Plan], price_id: str) -> Plan | None:
    """The plan a price buys: listed in a plan's `stripe_price_ids`, or the explicit
    `price_clawfleet_<plan>` that `clawfleet simulate-payment` uses for plans without
    Stripe prices (no real Stripe price id has that form)."""
    listed = next((p for p in plans.values() if price_id in p.stripe_price_ids), None)
    if listed is not None or not price_id.startswith(SYNTHETIC_PRICE_PREFIX):
        return listed
    return plans.get(price_id.removeprefix(SYNTHETIC_PRICE_PREFIX))


@dataclass(frozen=True)
class Applied:
    user_id: str | None
    touched: set[str]  # servers whose desired set changed
    place: bool  # a user became pending: run placement


async def apply_fact(
    conn: aiosqlite.Connection,
    fact: Fact,
    *,
    plans: dict[str, Plan],
    keyring: Keyring,
    grace: float,
    retention: float,
    now: float | None = None,
) -> Applied:
    now = time.time() if now is None else now
    if fact.subscription_id and fact.status is not None:
        await _record_subscription(conn, fact, now)
    user = await _find_or_create_user(conn, fact, keyring, now)
    if user is None:
        # A subscription nobody is linked to yet: its state waits in `subscriptions`
        # for the checkout that names the user.
        return Applied(None, set(), False)
    await _link(conn, user, fact, now)
    sub = None
    if user["stripe_subscription_id"] or fact.subscription_id:
        sub = await fetch_one(
            conn,
            "SELECT * FROM subscriptions WHERE id = ?",
            (user["stripe_subscription_id"] or fact.subscription_id,),
        )
    if sub is None:
        return Applied(user["id"], set(), False)
    return await _converge(
        conn, user["id"], sub, plans=plans, grace=grace, retention=retention, now=now
    )


async def _record_subscription(conn: aiosqlite.Connection, fact: Fact, now: float) -> None:
    await conn.execute(
        "INSERT INTO subscriptions (id, customer_id, status, price_id, current_period_end, state_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
        "customer_id = COALESCE(excluded.customer_id, subscriptions.customer_id), "
        "status = excluded.status, "
        # Without an API key the price comes from whichever subscription event carried it.
        "price_id = COALESCE(excluded.price_id, subscriptions.price_id), "
        "current_period_end = COALESCE(excluded.current_period_end, subscriptions.current_period_end), "
        "state_at = excluded.state_at, updated_at = excluded.updated_at "
        "WHERE excluded.state_at >= subscriptions.state_at",
        (
            fact.subscription_id,
            fact.customer_id,
            fact.status,
            fact.price_id,
            fact.current_period_end,
            fact.state_at,
            now,
        ),
    )


async def _find_or_create_user(
    conn: aiosqlite.Connection, fact: Fact, keyring: Keyring, now: float
) -> Row | None:
    for column, value in (("id", fact.user_id), ("stripe_subscription_id", fact.subscription_id)):
        if value:
            row = await fetch_one(conn, f"SELECT * FROM users WHERE {column} = ?", (value,))
            if row is not None:
                return row
    if not fact.user_id:
        return None
    if not USER_ID.match(fact.user_id):
        await events.record(
            conn,
            "billing_error",
            f"event {fact.event_id}: user id {fact.user_id!r} is not valid",
            at=now,
        )
        return None
    subdomain = await _free_subdomain(conn, fact.subdomain, fact.user_id)
    await conn.execute(
        "INSERT INTO users (id, subdomain, plan, state, created_at, updated_at, gateway_token_ciphertext) "
        "VALUES (?, ?, 'default', 'pending', ?, ?, ?)",
        (fact.user_id, subdomain, now, now, keyring.encrypt(keyring.new_secret())),
    )
    # Not placed until its subscription says so.
    await conn.execute("UPDATE users SET error = ? WHERE id = ?", (AWAITING, fact.user_id))
    await events.record(
        conn,
        "user_created",
        f"from Stripe event {fact.event_id}, subdomain {subdomain}",
        user_id=fact.user_id,
        at=now,
    )
    return await fetch_one(conn, "SELECT * FROM users WHERE id = ?", (fact.user_id,))


AWAITING = "awaiting an active subscription"


async def _free_subdomain(conn: aiosqlite.Connection, requested: str | None, user_id: str) -> str:
    candidates = []
    if requested and SUBDOMAIN.match(requested) and requested not in RESERVED_SUBDOMAINS:
        candidates.append(requested)
    base = derive_subdomain(user_id)
    candidates += [base] if base not in RESERVED_SUBDOMAINS else []
    candidates += [f"{base}-{i}" for i in range(2, 50)]
    for label in candidates:
        if await fetch_one(conn, "SELECT 1 FROM users WHERE subdomain = ?", (label,)) is None:
            return label
    return f"{base[:40]}-{int(time.time())}"


async def _link(conn: aiosqlite.Connection, user: Row, fact: Fact, now: float) -> None:
    customer = user["stripe_customer_id"] or fact.customer_id
    subscription = user["stripe_subscription_id"] or fact.subscription_id
    if (customer, subscription) != (user["stripe_customer_id"], user["stripe_subscription_id"]):
        await conn.execute(
            "UPDATE users SET stripe_customer_id = ?, stripe_subscription_id = ?, updated_at = ? WHERE id = ?",
            (customer, subscription, now, user["id"]),
        )


async def _converge(
    conn: aiosqlite.Connection,
    user_id: str,
    sub: Row,
    *,
    plans: dict[str, Plan],
    grace: float,
    retention: float,
    now: float,
) -> Applied:
    user = await fetch_one(conn, "SELECT * FROM users WHERE id = ?", (user_id,))
    assert user is not None
    status = sub["status"]
    past_due_since = user["past_due_since"]
    if status == "past_due" and past_due_since is None:
        past_due_since = now
    elif status != "past_due":
        past_due_since = None
    plan_name, error = user["plan"], None
    if sub["price_id"]:
        plan = plan_for_price(plans, sub["price_id"])
        if plan is None:
            error = f"unknown Stripe price {sub['price_id']}: map it to a plan in PLANS"
        else:
            plan_name = plan.name
    await conn.execute(
        "UPDATE users SET billing_status = ?, past_due_since = ?, plan = ?, updated_at = ? WHERE id = ?",
        (status, past_due_since, plan_name, now, user_id),
    )
    if error:
        if user["error"] != error:
            await conn.execute("UPDATE users SET error = ? WHERE id = ?", (error, user_id))
            await events.record(conn, "billing_error", error, user_id=user_id, at=now)
        return Applied(user_id, set(), False)
    return await set_target(
        conn, user_id, target(status, past_due_since, now, grace), retention=retention, now=now
    )


async def set_target(
    conn: aiosqlite.Connection,
    user_id: str,
    goal: Target,
    *,
    retention: float,
    now: float,
    reason: str = "billing",
) -> Applied:
    """Moves a user towards `goal`; shared by billing and the operators' actions."""
    user = await fetch_one(conn, "SELECT * FROM users WHERE id = ?", (user_id,))
    assert user is not None
    state, server = user["state"], user["server_id"]
    touched: set[str] = set()
    place = False
    if goal == "run":
        if user["error"]:
            await conn.execute("UPDATE users SET error = NULL WHERE id = ?", (user_id,))
        if state == "suspended" and server:
            # Back on the same server: its volume holds the user's data.
            await _state(conn, user_id, "provisioning", server, now)
            touched.add(server)
        elif state in ("suspended", "deprovisioned") or (state == "pending" and user["error"]):
            await _state(conn, user_id, "pending", None, now)
            place = True
        elif state == "pending":
            place = True
    elif goal == "suspend" and state in ("provisioning", "running", "pending"):
        # The container stops (the worker drops it from its set), the volume and the
        # reserved room stay, so a payment brings the user back on the same data.
        await _state(conn, user_id, "suspended", server, now)
        touched |= {server} if server else set()
    elif goal == "deprovision" and state != "deprovisioned":
        await conn.execute(
            "UPDATE users SET state = 'deprovisioned', server_id = NULL, moving_from = NULL, "
            "data_server_id = COALESCE(?, data_server_id), purge_after = ?, updated_at = ? WHERE id = ?",
            (server, now + retention, now, user_id),
        )
        touched |= {server} if server else set()
    else:
        return Applied(user_id, set(), place)
    for s in touched:
        await bump_generation(conn, s)
    if touched or place:
        await events.record(
            conn,
            f"user_{goal}",
            f"{reason}: was {state}",
            server_id=server,
            user_id=user_id,
            at=now,
        )
    return Applied(user_id, touched, place)


async def _state(
    conn: aiosqlite.Connection, user_id: str, state: str, server: str | None, now: float
) -> None:
    await conn.execute(
        "UPDATE users SET state = ?, server_id = ?, updated_at = ? WHERE id = ?",
        (state, server, now, user_id),
    )
