"""Stripe subscriptions as billing last knew them: the only writer of the
`subscriptions` table, and the order of a subscription's states.

Contract:
- `record` stores a fact's subscription state only when `supersedes` says it is newer
  than the stored one (by `state_at`, then, within one second, by what the payload
  says), so delivery order does not matter; re-applying a fact is a no-op.
- `hold_user` remembers the user an operator deleted on its subscription
  (`held_user`), so that the subscription's later events never create it again.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiosqlite

from control.billing.decode import BillingFact
from control.db.store import Row, fetch_one

RUN_STATUSES = ("active", "trialing")
SUSPEND_STATUSES = ("unpaid", "paused")
END_STATUSES = ("canceled", "incomplete_expired", "deleted")


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


async def get(conn: aiosqlite.Connection, sub_id: str | None) -> Row | None:
    if not sub_id:
        return None
    return await fetch_one(conn, "SELECT * FROM subscriptions WHERE id = ?", (sub_id,))


async def record(conn: aiosqlite.Connection, fact: BillingFact, now: float) -> None:
    stored = await get(conn, fact.subscription_id)
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


async def hold_user(
    conn: aiosqlite.Connection, user: Row, held_user: str | None, now: float
) -> None:
    """Sets (or, with None, clears) the user an operator deleted on its subscription."""
    await conn.execute(
        "INSERT INTO subscriptions (id, customer_id, state_at, updated_at, held_user) "
        "VALUES (?, ?, 0, ?, ?) ON CONFLICT (id) DO UPDATE SET held_user = excluded.held_user",
        (user["stripe_subscription_id"], user["stripe_customer_id"], now, held_user),
    )
