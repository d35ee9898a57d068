"""Agents started while their buyer is on the checkout page (issue 12): provisional users.

Contract:
- A provisional user is a user row whose `billing_status` is PROVISIONAL ("checkout",
  also its `billing_state`, so the admin API and the dashboard show it as such), made
  at sign-up with the checkout's user id, subdomain and plan, a fresh gateway token
  (encrypted like every user's) and `created_by` "stripe" (control/billing/claims.py:
  the payment that names that id may link it). It is never a customer before it is
  paid for: no sign-in link (control/users/signin_links.py), no portal account or
  session (control/portal/checkouts.py `users_with_email`), no status-page progress.
- `start` runs in the sign-up's write transaction, after the checkout is reserved,
  and makes one only when `may_start` allows it (on, fewer than PRESTART_MAX live
  provisional users, no per-user volume to create) and an active server has room NOW
  for it after every pending user (who are tried first, so a paying user never
  waits for a buyer): it is then placed at once (`provisioning`); otherwise nothing
  is written, and the payment takes the ordinary path. It never waits for a server
  and never makes one be created. Returns the server to bump, or None.
- A payment adopts it (control/billing/claims.py, `adopt`): the same row, linked to
  the customer and subscription; nothing its container's spec covers changes unless
  the payment's plan or subdomain differ, so the worker keeps the running container.
- `withdraw_due` (the sign-up's transaction, before its reservation, and the fleet's
  sweep, at most WITHDRAW_BATCH per run) withdraws every live provisional user that
  `withdraw_reason` names: its checkout expired or was released, PRESTART_TTL passed,
  or it lost its server (never left waiting for one). Withdrawn in one transaction
  (control/users/records.py `withdraw`): off its server, its subdomain freed, its
  volumes purged at once with no retention; no hold, so the row is forgotten once the
  worker has purged (records.py `advance_purges`) and a later payment creates the user
  anew (until then claims.py asks the outbox to retry).
"""

from __future__ import annotations

from collections.abc import Callable

import aiosqlite

from control.db import events
from control.db.store import fetch_all, fetch_one
from control.plans import Plan
from control.users import records
from control.users.placement import Demand
from control.users.plans import plan_of
from control.users.room_index import RoomIndex

PROVISIONAL = "checkout"  # users.billing_status (and billing_state) of a provisional user
CREATED_BY = "stripe"  # control/billing/claims.py STRIPE: a payment may adopt it
WITHDRAW_BATCH = 20  # provisional users withdrawn per run at most (bounded work)
PENDING_FIRST = 200  # pending users tried before a provisional one, at most


def provisional_sql(column: str = "billing_status") -> str:
    """SQL: the user row whose billing status is `column` is provisional."""
    return f"COALESCE({column}, '') = '{PROVISIONAL}'"


Encrypted = Callable[[], str]  # a fresh gateway token, encrypted


def may_start(enabled: bool, live: int, limit: int, volume_per_user: bool) -> bool:
    """Whether a sign-up may start a provisional user at all (before room is looked at):
    a per-user volume would be a provider's resource created for someone who may never
    pay, so not with USER_VOLUMES."""
    return enabled and not volume_per_user and live < limit


def withdraw_reason(
    state: str,
    created_at: float,
    checkout_state: str | None,
    checkout_expires_at: float | None,
    now: float,
    ttl: float,
) -> str | None:
    """Why a live provisional user goes now, or None while it may stay."""
    if checkout_state is None:
        return "its checkout is gone"
    if checkout_state != "open" or (checkout_expires_at or 0.0) <= now:
        return "its checkout expired or was released unpaid"
    if created_at + ttl <= now:
        return f"not paid within {ttl / 60:.0f} minutes"
    if state not in ("provisioning", "running"):
        return f"it is {state}: a provisional user never waits for a server"
    return None


async def live_count(conn: aiosqlite.Connection) -> int:
    row = await fetch_one(
        conn,
        "SELECT COUNT(*) AS n FROM users WHERE billing_status = ? AND state <> 'deprovisioned'",
        (PROVISIONAL,),
    )
    return int(row["n"]) if row else 0


async def start(
    conn: aiosqlite.Connection,
    checkout: dict[str, object],
    plans: dict[str, Plan],
    index: RoomIndex,
    needs: frozenset[str],
    token: Encrypted,
    now: float,
) -> str | None:
    """A provisional user for `checkout` (user_id, subdomain, plan), placed on a server
    with room now; the server, or None (nothing written). The caller has checked
    `may_start`."""
    user_id, subdomain = str(checkout["user_id"]), str(checkout["subdomain"])
    taken = await fetch_one(
        conn, "SELECT 1 FROM users WHERE id = ? OR subdomain = ?", (user_id, subdomain)
    )
    if taken is not None:
        return None  # the reservation excludes it; never take another user's name or id
    plan = plan_of(plans, str(checkout["plan"]))
    pending = await fetch_all(
        conn,
        "SELECT id, plan FROM users WHERE state = 'pending' AND error IS NULL "
        "ORDER BY created_at, id LIMIT ?",
        (PENDING_FIRST,),
    )
    first = [_demand(plans, r["id"], r["plan"], needs) for r in pending]
    placed, _ = await index.place(conn, [*first, _demand(plans, user_id, plan.name, needs)])
    server = placed.get(user_id)
    if server is None:
        return None
    await records.insert(
        conn, user_id, subdomain, plan.name, token(), now=now, created_by=CREATED_BY
    )
    await records.set_billing_status(conn, user_id, PROVISIONAL, None, plan.name, now)
    await records.set_billing_state(conn, user_id, PROVISIONAL)
    await records.set_state(conn, user_id, "provisioning", server, now)
    await events.record(
        conn,
        "user_prestarted",
        f"checkout open: started on {server} before payment, subdomain {subdomain}",
        server_id=server,
        user_id=user_id,
        at=now,
    )
    return server


def _demand(plans: dict[str, Plan], user_id: str, plan_name: str, needs: frozenset[str]) -> Demand:
    plan = plan_of(plans, plan_name)
    return Demand(user_id, plan.memory_mb, plan.cpus, None, False, needs)


async def withdraw_due(conn: aiosqlite.Connection, now: float, ttl: float) -> list[str]:
    """Withdraws the live provisional users `withdraw_reason` names (at most
    WITHDRAW_BATCH); returns the servers whose desired set changed."""
    rows = await fetch_all(
        conn,
        "SELECT u.id, u.state, u.server_id, u.created_at, c.state AS checkout_state, "
        "c.expires_at FROM users u LEFT JOIN checkouts c ON c.user_id = u.id "
        "WHERE u.billing_status = ? AND u.state <> 'deprovisioned' ORDER BY u.created_at LIMIT ?",
        (PROVISIONAL, WITHDRAW_BATCH),
    )
    touched: list[str] = []
    for row in rows:
        why = withdraw_reason(
            row["state"], row["created_at"], row["checkout_state"], row["expires_at"], now, ttl
        )
        if why is None:
            continue
        server = await records.withdraw(conn, row["id"], now)
        touched += [server] if server else []
        await events.record(
            conn, "user_withdrawn", f"unpaid: {why}", server_id=server, user_id=row["id"], at=now
        )
    return touched


def is_provisional(user: aiosqlite.Row | None) -> bool:
    return user is not None and user["billing_status"] == PROVISIONAL
