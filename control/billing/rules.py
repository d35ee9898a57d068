"""Billing facts → users: which plan a payment buys and whether the user should run,
be suspended or be deprovisioned; and operators' holds on top.

Contract:
- Two sources decide what a user does. Billing says whether the customer *may* run
  (`billing_state`: `target` of the subscription's status; "run" for an operator's
  user, which has no billing). An operator's hold (`hold`: "suspended" or "deleted",
  `next_hold`) says whether they *will*, until the operator lifts it (resume). The
  user moves to `combine(billing_state, hold)`, the more restrictive of the two, so a
  billing event never undoes an operator's order and a held (deleted) user is never
  resurrected by any event. Both are stored on the user and shown by the admin API.
- `apply_fact` runs inside one store transaction and is idempotent (the webhook
  outbox delivers at least once): the fact's subscription state is recorded
  (control/billing/subscriptions.py), the user it may act on is found or created
  (control/billing/claims.py), and the user converges. Identity and linking (a
  checkout) are not subscription state: a checkout that arrives after its
  subscription events links the user to the state those events left. A provisional
  user a payment adopts (control/users/prestart.py) touches its server only when the
  payment changed its plan or subdomain: otherwise its running container is kept.
- Every function returns `Applied`: the servers whose desired set changed (the caller
  bumps their generation in the same transaction, control/workers/assignments.py
  `commit`) and whether placement should run. Users are written only through
  control/users/records.py.
- A placed user whose plan a payment changes (an upgrade or a downgrade) while it runs
  touches the servers holding its container, so the worker replaces the container with
  the new plan's limits (its volume stays); a `user_replanned` event says so, and names
  a server the new plan overfills (by the room the control plane counts), for the
  operator to move the user (POST /v1/users/{id}/move). A plan change never moves a
  user by itself: a move copies the customer's data.
- A user deprovisioned here gets, in the same transaction, what `Policy.on_cancelled`
  asks (the final snapshot of its volume, control/volumes/backups.py, wired by the
  facade with backups on); the servers it returns are touched too, so the set a worker
  reads without the user's container already carries that job.
- An unknown price is an error shown on the user and in the event log; the user is
  not started. Nothing here raises for bad billing data: retrying would not fix it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import aiosqlite

from control.billing import claims, subscriptions
from control.billing.claims import STRIPE
from control.billing.claims import derive_subdomain as derive_subdomain  # the CLI's import
from control.billing.decode import BillingFact
from control.billing.subscriptions import END_STATUSES, RUN_STATUSES, SUSPEND_STATUSES
from control.db import events
from control.db.store import Row, Store, fetch_one
from control.errors import NotFound
from control.keyring import Keyring
from control.plans import Plan
from control.users import prestart, records
from control.users.room_index import COUNTED
from control.users.rooms import Reserve, rooms

Target = Literal["run", "suspend", "deprovision", "wait"]
Hold = Literal["suspended", "deleted"]
OperatorAction = Literal["suspend", "delete", "resume"]
Fact = BillingFact
SYNTHETIC_PRICE_PREFIX = "price_clawfleet_"


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


# Called in the transaction that deprovisions a user: (conn, user id, now) -> servers touched.
OnCancelled = Callable[[aiosqlite.Connection, str, float], Awaitable[set[str]]]


@dataclass(frozen=True)
class Policy:
    """What converging a user needs besides the database."""

    plans: dict[str, Plan]
    grace: float
    retention: float
    on_cancelled: OnCancelled | None = None
    reserve: Reserve = field(default_factory=Reserve)  # what each server keeps (rooms.py)


async def apply_fact(
    conn: aiosqlite.Connection,
    fact: BillingFact,
    policy: Policy,
    keyring: Keyring,
    *,
    now: float | None = None,
) -> Applied:
    now = time.time() if now is None else now
    if fact.subscription_id and fact.status is not None:
        await subscriptions.record(conn, fact, now)
    sub = await subscriptions.get(conn, fact.subscription_id)
    named = await fetch_one(conn, "SELECT * FROM users WHERE id = ?", (fact.user_id,))
    user = await claims.resolve(conn, fact, sub, keyring, now)
    if user is None:
        # Nobody yet, or nobody it may act on: its state waits in `subscriptions`.
        return Applied(None, set(), False)
    sub = await subscriptions.get(conn, user["stripe_subscription_id"])
    applied = await converge(conn, user["id"], sub, policy, now=now)
    if named is None or not prestart.is_provisional(named):
        return applied
    return Applied(applied.user_id, applied.touched | await _respecced(conn, named), applied.place)


async def _respecced(conn: aiosqlite.Connection, before: Row) -> set[str]:
    """The server of an adopted provisional user whose plan or subdomain the payment
    changed (its container is replaced); none when the spec is unchanged, so the worker
    keeps the container that started while its buyer paid."""
    after = await fetch_one(conn, "SELECT * FROM users WHERE id = ?", (before["id"],))
    if after is None or after["server_id"] is None:
        return set()
    same = (after["plan"], after["subdomain"]) == (before["plan"], before["subdomain"])
    return set() if same else {str(after["server_id"])}


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
        await records.set_hold(conn, user_id, hold, now)
        await events.record(conn, "user_hold", f"operator: {action}; hold {hold}", user_id=user_id)
    if user["stripe_subscription_id"]:
        # Remembered on the subscription too, so that its events do not create the user
        # again once its data is purged.
        await subscriptions.hold_user(conn, user, user_id if hold == "deleted" else None, now)
    sub = await subscriptions.get(conn, user["stripe_subscription_id"])
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
    error, old_plan = (
        await _record_billing(conn, user_id, sub, policy.plans, now) if sub else (None, None)
    )
    user = await fetch_one(conn, "SELECT * FROM users WHERE id = ?", (user_id,))
    assert user is not None
    verdict = billing_verdict(user, now, policy.grace)
    if user["billing_state"] != verdict:
        await records.set_billing_state(conn, user_id, verdict)
    goal = combine(verdict, user["hold"])
    if error and goal == "run":
        return Applied(user_id, set(), False)  # an unknown price never starts a user
    applied = await set_target(
        conn, user_id, goal, retention=policy.retention, now=now, reason=reason
    )
    if goal == "run" and old_plan is not None:
        resized = await _replanned(conn, user_id, old_plan, policy, now)
        return Applied(applied.user_id, applied.touched | resized, applied.place)
    # A deprovision goal always deprovisions a user that was not yet (`_move_towards`).
    cancelled = goal == "deprovision" and user["state"] != "deprovisioned"
    if not cancelled or policy.on_cancelled is None:
        return applied
    touched = applied.touched | await policy.on_cancelled(conn, user_id, now)
    return Applied(applied.user_id, touched, applied.place)


async def _replanned(
    conn: aiosqlite.Connection, user_id: str, old: str, policy: Policy, now: float
) -> set[str]:
    """The servers holding the container of a user whose plan changed from `old`."""
    user = await fetch_one(
        conn, "SELECT plan, server_id, moving_from FROM users WHERE id = ?", (user_id,)
    )
    assert user is not None
    held = {str(s) for s in (user["server_id"], user["moving_from"]) if s}
    if not held:
        return held  # placement sizes it by the new plan
    said = f"plan {old} -> {user['plan']}: its container is replaced with the new plan's limits"
    full = await rooms(conn, policy.plans, policy.reserve, COUNTED, held)
    over = sorted(r.server_id for r in full if r.overfull)
    if over:
        said += f"; {', '.join(over)} is now overfull: move the user to a server with room"
    await events.record(
        conn, "user_replanned", said, server_id=user["server_id"], user_id=user_id, at=now
    )
    return held


async def _record_billing(
    conn: aiosqlite.Connection, user_id: str, sub: Row, plans: dict[str, Plan], now: float
) -> tuple[str | None, str | None]:
    """Copies the subscription's status and plan onto the user: the price error, if any,
    and the plan it had when the subscription's price changed it."""
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
    await records.set_billing_status(conn, user_id, status, past_due_since, plan_name, now)
    if error and user["error"] != error:
        await records.set_error(conn, user_id, error)
        await events.record(conn, "billing_error", error, user_id=user_id, at=now)
    return error, user["plan"] if plan_name != user["plan"] else None


async def refresh(
    conn: aiosqlite.Connection, user_id: str, policy: Policy, *, now: float, reason: str
) -> Applied:
    """Converges a user again from what is stored (the past_due grace ran out)."""
    user = await fetch_one(
        conn, "SELECT stripe_subscription_id FROM users WHERE id = ?", (user_id,)
    )
    if user is None:
        return Applied(None, set(), False)
    sub = await subscriptions.get(conn, user["stripe_subscription_id"])
    return await converge(conn, user_id, sub, policy, now=now, reason=reason)


async def overdue(store: Store, now: float, grace: float) -> list[str]:
    """Users past_due for longer than the grace, whose verdict is not yet `suspend`
    (a held user is re-evaluated too, so a resume sees the verdict)."""
    rows = await store.fetch_all(
        "SELECT id FROM users WHERE billing_status = 'past_due' AND past_due_since <= ? "
        "AND COALESCE(billing_state, '') <> 'suspend'",
        (now - grace,),
    )
    return [row["id"] for row in rows]


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
    moved = await _move_towards(conn, user, goal, retention=retention, now=now)
    if moved is None:
        return Applied(user_id, set(), False)
    touched, place = moved
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


async def _move_towards(
    conn: aiosqlite.Connection, user: Row, goal: Target, *, retention: float, now: float
) -> tuple[set[str], bool] | None:
    """The writes that move `user` towards `goal`: (servers touched, place?), or None
    when the goal asks nothing of a user in its state."""
    user_id, state, server = user["id"], user["state"], user["server_id"]
    if goal == "run":
        if user["error"]:
            await records.set_error(conn, user_id, None)
        if state == "suspended" and server:
            # Back on the same server: its volume holds the user's data.
            await records.set_state(conn, user_id, "provisioning", server, now)
            return {server}, False
        if state in ("suspended", "deprovisioned") or (state == "pending" and user["error"]):
            await records.set_state(conn, user_id, "pending", None, now)
            return set(), True
        return set(), state == "pending"
    if goal == "suspend" and state in ("provisioning", "running", "pending"):
        # The container stops (the worker drops it from its set), the volume and the
        # reserved room stay, so a payment brings the user back on the same data.
        await records.set_state(conn, user_id, "suspended", server, now)
        return ({server} if server else set()), False
    if goal == "suspend" and state == "deprovisioned":
        # An operator lifted a delete while billing says unpaid: kept like any unpaid
        # user (no retention clock), placed again once it pays.
        await records.set_state(conn, user_id, "suspended", None, now)
        return set(), False
    if goal == "deprovision" and state != "deprovisioned":
        await records.deprovision(conn, user_id, server, now + retention, now)
        return ({server} if server else set()), False
    return None
