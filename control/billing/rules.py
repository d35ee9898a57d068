"""Billing facts → users: who a payment is for, which plan it buys, and whether the
user should run, be suspended or be deprovisioned; and operators' holds on top.

Contract:
- Two sources decide what a user does. Billing says whether the customer *may* run
  (`billing_state`: `target` of the subscription's status; "run" for an operator's
  user, which has no billing). An operator's hold (`hold`: "suspended" or "deleted",
  `next_hold`) says whether they *will*, until the operator lifts it (resume). The
  user moves to `combine(billing_state, hold)`, the more restrictive of the two, so a
  billing event never undoes an operator's order and a held (deleted) user is never
  resurrected by any event. Both are stored on the user and shown by the admin API.
- `apply_fact` runs inside one store transaction and is idempotent (the webhook
  outbox delivers at least once). Subscription state is kept per subscription in
  `subscriptions`; a fact replaces it only when `supersedes` says it is newer (by
  `state_at`, then, within one second, by what the payload says), so delivery order
  does not matter. Identity and linking (a checkout) are not subscription state: a
  checkout that arrives after its subscription events links the user to the state
  those events left.
- Who a payment may act on (`claim`): the user linked to its subscription; else the
  user it names, only if that user is linked to the same Stripe customer (a renewal)
  or was created by billing without a customer; else a new user it creates. It never
  takes over a user linked to another customer or created by an operator (no
  customer): that is a `billing_conflict` event plus `billing_conflict` on the named
  user, and the payment is linked to nobody. A subscription whose user an operator
  deleted stays unlinked after the user is purged (`subscriptions.held_user`).
- An unknown price is an error shown on the user and in the event log; the user is
  not started. Nothing here raises for bad billing data: retrying would not fix it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Literal, Protocol

import aiosqlite

from control.db import events
from control.db.store import Row, fetch_one
from control.errors import NotFound
from control.keyring import Keyring
from control.users.plans import Plan
from control.users.records import RESERVED_SUBDOMAINS, SUBDOMAIN, USER_ID, bump_generation

Target = Literal["run", "suspend", "deprovision", "wait"]
Hold = Literal["suspended", "deleted"]
OperatorAction = Literal["suspend", "delete", "resume"]
RUN_STATUSES = ("active", "trialing")
SUSPEND_STATUSES = ("unpaid", "paused")
END_STATUSES = ("canceled", "incomplete_expired", "deleted")
STRIPE = "stripe"  # users.created_by of a user a payment created


class Fact(Protocol):
    """What control/billing/inbox.py's BillingFact carries."""

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
    @property
    def previous_status(self) -> str | None: ...


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


# --- the two sources: billing's "may", the operator's "will" -------------------------
_RESTRICTION: dict[Target, int] = {"run": 0, "wait": 1, "suspend": 2, "deprovision": 3}
_HELD: dict[Hold | None, Target] = {None: "run", "suspended": "suspend", "deleted": "deprovision"}


def combine(billing: Target, hold: Hold | None) -> Target:
    """What the user does: the more restrictive of billing's verdict and the hold."""
    return max(billing, _HELD[hold], key=_RESTRICTION.__getitem__)


def next_hold(hold: Hold | None, action: OperatorAction) -> Hold | None:
    """The hold after an operator's action: resume lifts any hold; a suspend never
    softens a delete."""
    if action == "resume":
        return None
    if action == "delete" or hold == "deleted":
        return "deleted"
    return "suspended"


def billing_verdict(user: Row, now: float, grace: float) -> Target:
    """Whether billing lets the user run. An operator's user (no subscription, not
    created by a payment) has no billing: it may run."""
    if user["stripe_subscription_id"] is None and user["created_by"] != STRIPE:
        return "run"
    return target(user["billing_status"], user["past_due_since"], now, grace)


def shown_billing_state(user: Row) -> str:
    """`billing_state` for the admin API, also for users billing has not evaluated
    since the column was added."""
    if user["billing_state"]:
        return str(user["billing_state"])
    if user["stripe_subscription_id"] is None and user["created_by"] != STRIPE:
        return "run"
    return "wait"


# --- ordering subscription states -----------------------------------------------------
@dataclass(frozen=True)
class SubState:
    state_at: int
    status: str | None
    previous_status: str | None = None
    current_period_end: int | None = None


# Within one second, the order a subscription's status normally moves in: created
# incomplete, then paid (active) or failing; a failing one recovers to active.
_PROGRESS = {"incomplete": 0, "paused": 1, "unpaid": 1, "past_due": 2, "trialing": 3, "active": 3}


def supersedes(new: SubState, old: SubState) -> bool:
    """Whether `new` replaces the stored `old` state of the same subscription.

    An ended subscription never comes back (Stripe cannot reactivate it), so an end
    always wins over a live state and a live state never replaces an end. Otherwise
    the later `state_at` wins. Within the same second (no API key to re-fetch), the
    payload decides where it can: a state that was the other's previous status is
    older; a later billing period is newer; else the usual progress of a
    subscription (incomplete → failing → active). A true tie keeps the later
    delivery, which also makes re-applying the same fact a no-op."""
    new_end, old_end = new.status in END_STATUSES, old.status in END_STATUSES
    if new_end != old_end:
        return new_end
    if new_end:  # both ended: "deleted" (gone) is final over "canceled"
        return new.status == "deleted" or old.status != "deleted"
    if new.state_at != old.state_at:
        return new.state_at > old.state_at
    return _later_within_second(new, old)


def _later_within_second(new: SubState, old: SubState) -> bool:
    if new.status == old.status:
        return True
    if old.previous_status == new.status and new.previous_status != old.status:
        return False  # old moved away from new's status: new is the older change
    if new.previous_status == old.status and old.previous_status != new.status:
        return True
    if new.current_period_end and old.current_period_end:
        if new.current_period_end != old.current_period_end:
            return new.current_period_end > old.current_period_end
    return _PROGRESS.get(new.status or "", -1) >= _PROGRESS.get(old.status or "", -1)


# --- who a payment may act on ---------------------------------------------------------
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


Claim = Literal["link", "relink", "ignore", "conflict"]


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


@dataclass(frozen=True)
class Policy:
    """What converging a user needs besides the database."""

    plans: dict[str, Plan]
    grace: float
    retention: float


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
    sub = await _subscription(conn, fact.subscription_id)
    user, how = await _resolve(conn, fact, sub, keyring, now)
    if user is None:
        # Nobody yet, or nobody it may act on: its state waits in `subscriptions`.
        return Applied(None, set(), False)
    user = await _link(conn, user, fact, renew=how == "relink", now=now)
    sub = await _subscription(conn, user["stripe_subscription_id"])
    return await converge(conn, user["id"], sub, Policy(plans, grace, retention), now=now)


async def _subscription(conn: aiosqlite.Connection, sub_id: str | None) -> Row | None:
    if not sub_id:
        return None
    return await fetch_one(conn, "SELECT * FROM subscriptions WHERE id = ?", (sub_id,))


async def _record_subscription(conn: aiosqlite.Connection, fact: Fact, now: float) -> None:
    stored = await _subscription(conn, fact.subscription_id)
    new = SubState(fact.state_at, fact.status, fact.previous_status, fact.current_period_end)
    if stored is not None:
        old = SubState(
            stored["state_at"],
            stored["status"],
            stored["previous_status"],
            stored["current_period_end"],
        )
        if not supersedes(new, old):
            return
    await conn.execute(
        "INSERT INTO subscriptions (id, customer_id, status, previous_status, price_id, "
        "current_period_end, state_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET "
        "customer_id = COALESCE(excluded.customer_id, subscriptions.customer_id), "
        "status = excluded.status, previous_status = excluded.previous_status, "
        # Without an API key the price comes from whichever subscription event carried it.
        "price_id = COALESCE(excluded.price_id, subscriptions.price_id), "
        "current_period_end = COALESCE(excluded.current_period_end, subscriptions.current_period_end), "
        "state_at = excluded.state_at, updated_at = excluded.updated_at",
        (
            fact.subscription_id,
            fact.customer_id,
            fact.status,
            fact.previous_status,
            fact.price_id,
            fact.current_period_end,
            fact.state_at,
            now,
        ),
    )


async def _resolve(
    conn: aiosqlite.Connection, fact: Fact, sub: Row | None, keyring: Keyring, now: float
) -> tuple[Row | None, Claim]:
    """The user this fact may act on (None: nobody yet, or a refused claim), and how."""
    if fact.subscription_id:
        row = await fetch_one(
            conn, "SELECT * FROM users WHERE stripe_subscription_id = ?", (fact.subscription_id,)
        )
        if row is not None:
            return row, "link"
        if sub is not None and sub["held_user"]:
            return None, "ignore"  # its user was deleted by an operator: never brought back
    if not fact.user_id:
        return None, "ignore"
    row = await fetch_one(conn, "SELECT * FROM users WHERE id = ?", (fact.user_id,))
    if row is None:
        return await _create_user(conn, fact, keyring, now), "link"
    verdict, why = claim(await _owner(conn, row), _payer(fact, sub))
    if verdict == "conflict":
        await _conflict(conn, row, fact, why, now)
    return (row if verdict in ("link", "relink") else None), verdict


async def _owner(conn: aiosqlite.Connection, user: Row) -> Owner:
    sub = await _subscription(conn, user["stripe_subscription_id"])
    return Owner(
        customer=user["stripe_customer_id"],
        created_by_stripe=user["created_by"] == STRIPE,
        subscription=user["stripe_subscription_id"],
        subscription_ended=sub is not None and sub["status"] in END_STATUSES,
    )


def _payer(fact: Fact, sub: Row | None) -> Payer:
    status = sub["status"] if sub is not None else fact.status
    return Payer(fact.customer_id, fact.subscription_id, status in END_STATUSES)


async def _conflict(
    conn: aiosqlite.Connection, user: Row, fact: Fact, why: str, now: float
) -> None:
    message = (
        f"Stripe event {fact.event_id} ({fact.event_type}) names this user for customer "
        f"{fact.customer_id}, subscription {fact.subscription_id}: not linked, {why}"
    )
    if user["billing_conflict"] == message:
        return  # the same fact again (at-least-once delivery): already shown
    await conn.execute("UPDATE users SET billing_conflict = ? WHERE id = ?", (message, user["id"]))
    await events.record(conn, "billing_conflict", message, user_id=user["id"], at=now)


async def _create_user(
    conn: aiosqlite.Connection, fact: Fact, keyring: Keyring, now: float
) -> Row | None:
    assert fact.user_id is not None
    if not USER_ID.fullmatch(fact.user_id):
        await events.record(
            conn,
            "billing_error",
            f"event {fact.event_id}: user id {fact.user_id!r} is not valid",
            at=now,
        )
        return None
    subdomain = await _free_subdomain(conn, fact.subdomain, fact.user_id)
    await conn.execute(
        "INSERT INTO users (id, subdomain, plan, state, created_at, updated_at, "
        "gateway_token_ciphertext, created_by, error) VALUES (?, ?, 'default', 'pending', ?, ?, ?, ?, ?)",
        # Not placed until its subscription says so.
        (
            fact.user_id,
            subdomain,
            now,
            now,
            keyring.encrypt(keyring.new_secret()),
            STRIPE,
            AWAITING,
        ),
    )
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
    if requested and SUBDOMAIN.fullmatch(requested) and requested not in RESERVED_SUBDOMAINS:
        candidates.append(requested)
    base = derive_subdomain(user_id)
    candidates += [base] if base not in RESERVED_SUBDOMAINS else []
    candidates += [f"{base}-{i}" for i in range(2, 50)]
    for label in candidates:
        if await fetch_one(conn, "SELECT 1 FROM users WHERE subdomain = ?", (label,)) is None:
            return label
    return f"{base[:40]}-{int(time.time())}"


async def _link(
    conn: aiosqlite.Connection, user: Row, fact: Fact, *, renew: bool, now: float
) -> Row:
    """Links the user to the fact's customer and subscription where it has none yet,
    or (`renew`) to its own customer's new subscription when its old one ended."""
    customer = user["stripe_customer_id"] or fact.customer_id
    subscription = user["stripe_subscription_id"] or fact.subscription_id
    if renew:
        subscription = fact.subscription_id
    if (customer, subscription) == (user["stripe_customer_id"], user["stripe_subscription_id"]):
        return user
    await conn.execute(
        "UPDATE users SET stripe_customer_id = ?, stripe_subscription_id = ?, updated_at = ? WHERE id = ?",
        (customer, subscription, now, user["id"]),
    )
    linked = await fetch_one(conn, "SELECT * FROM users WHERE id = ?", (user["id"],))
    assert linked is not None
    return linked


async def operator_action(
    conn: aiosqlite.Connection,
    user_id: str,
    action: OperatorAction,
    policy: Policy,
    *,
    now: float,
) -> Applied:
    """An operator's suspend, delete or resume: sets or lifts the hold, then the user
    moves to what billing and the hold together allow."""
    user = await fetch_one(conn, "SELECT * FROM users WHERE id = ?", (user_id,))
    if user is None:
        raise NotFound(f"no user {user_id}")
    hold = next_hold(user["hold"], action)
    if hold != user["hold"]:
        await conn.execute(
            "UPDATE users SET hold = ?, hold_at = ?, updated_at = ? WHERE id = ?",
            (hold, now, now, user_id),
        )
        await events.record(conn, "user_hold", f"operator: {action}; hold {hold}", user_id=user_id)
    if user["stripe_subscription_id"]:
        # Remembered on the subscription too, so that its events do not create the user
        # again once its data is purged.
        await conn.execute(
            "INSERT INTO subscriptions (id, customer_id, state_at, updated_at, held_user) "
            "VALUES (?, ?, 0, ?, ?) ON CONFLICT (id) DO UPDATE SET held_user = excluded.held_user",
            (
                user["stripe_subscription_id"],
                user["stripe_customer_id"],
                now,
                user_id if hold == "deleted" else None,
            ),
        )
    sub = await _subscription(conn, user["stripe_subscription_id"])
    return await converge(conn, user_id, sub, policy, now=now, reason="operator")


async def converge(
    conn: aiosqlite.Connection,
    user_id: str,
    sub: Row | None,
    policy: Policy,
    *,
    now: float,
    reason: str = "billing",
) -> Applied:
    """Re-derives billing's verdict from the subscription (and the clock, for the
    past_due grace) and moves the user to what it and the operator's hold allow."""
    error = await _record_billing(conn, user_id, sub, policy.plans, now) if sub else None
    user = await fetch_one(conn, "SELECT * FROM users WHERE id = ?", (user_id,))
    assert user is not None
    verdict = billing_verdict(user, now, policy.grace)
    if user["billing_state"] != verdict:
        await conn.execute("UPDATE users SET billing_state = ? WHERE id = ?", (verdict, user_id))
    goal = combine(verdict, user["hold"])
    if error and goal == "run":
        return Applied(user_id, set(), False)  # an unknown price never starts a user
    return await set_target(conn, user_id, goal, retention=policy.retention, now=now, reason=reason)


async def _record_billing(
    conn: aiosqlite.Connection, user_id: str, sub: Row, plans: dict[str, Plan], now: float
) -> str | None:
    """Copies the subscription's status and plan onto the user; the price error, if any."""
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
    if error and user["error"] != error:
        await conn.execute("UPDATE users SET error = ? WHERE id = ?", (error, user_id))
        await events.record(conn, "billing_error", error, user_id=user_id, at=now)
    return error


async def refresh(
    conn: aiosqlite.Connection, user_id: str, policy: Policy, *, now: float, reason: str
) -> Applied:
    """Converges a user again from what is stored (the past_due grace ran out)."""
    user = await fetch_one(
        conn, "SELECT stripe_subscription_id FROM users WHERE id = ?", (user_id,)
    )
    if user is None:
        return Applied(None, set(), False)
    sub = await _subscription(conn, user["stripe_subscription_id"])
    return await converge(conn, user_id, sub, policy, now=now, reason=reason)


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
    elif goal == "suspend" and state == "deprovisioned":
        # An operator lifted a delete while billing says unpaid: kept like any unpaid
        # user (no retention clock), placed again once it pays.
        await _state(conn, user_id, "suspended", None, now)
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
    after = await fetch_one(conn, "SELECT state FROM users WHERE id = ?", (user_id,))
    if touched or place or (after is not None and after["state"] != state):
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
