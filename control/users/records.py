"""The `users` table's only writer: every INSERT, UPDATE and DELETE of a user row.

Contract:
- Each function writes in the caller's transaction (it takes the connection), except
  `create`, which is its own transaction. Functions that change what a server must
  run return that server's id (or ids, once per change); the caller bumps the
  server's generation in the same transaction (control/workers/assignments.py
  `commit`) and then wakes its long-poll. Nothing here touches `servers`.
- Every change that is a decision is recorded in the event log in the same
  transaction; plain column updates whose decision is recorded by the caller (billing,
  control/billing/) say so.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable

import aiosqlite

from control.db import events
from control.db.store import fetch_all, fetch_one
from control.errors import Conflict, NotFound
from control.keyring import Keyring
from control.plans import Plan
from control.users.names import validate_subdomain, validate_user_id


def creation(
    keyring: Keyring, user_id: str, subdomain: str, plan: Plan
) -> Callable[[aiosqlite.Connection], Awaitable[None]]:
    """An operator's user, as a function to run in the caller's transaction (with its
    placement: control/fleet.py `create_user`): validated now, with a fresh gateway
    token, waiting for placement. The caller has checked the plan
    (control/users/names.py `known_plan`)."""
    validate_user_id(user_id)
    validate_subdomain(subdomain)
    token = keyring.encrypt(keyring.new_secret())
    now = time.time()

    async def apply(conn: aiosqlite.Connection) -> None:
        # One statement for both checks: each is a hop to the database's thread while
        # the write lock is held (issue 16).
        taken = await fetch_one(
            conn,
            "SELECT EXISTS (SELECT 1 FROM users WHERE id = ?) AS id, "
            "EXISTS (SELECT 1 FROM users WHERE subdomain = ?) AS subdomain",
            (user_id, subdomain),
        )
        if taken and taken["id"]:
            raise Conflict(f"user {user_id} already exists", code="user_exists")
        if taken and taken["subdomain"]:
            raise Conflict(f"subdomain {subdomain} is taken", code="subdomain_taken")
        await insert(conn, user_id, subdomain, plan.name, token, now=now)
        await events.record(
            conn,
            "user_created",
            f"plan {plan.name}, subdomain {subdomain}",
            user_id=user_id,
            at=now,
        )

    return apply


async def insert(
    conn: aiosqlite.Connection,
    user_id: str,
    subdomain: str,
    plan: str,
    token_ciphertext: str,
    *,
    now: float,
    created_by: str | None = None,
    error: str | None = None,
) -> None:
    """A new pending user (the caller records the event)."""
    await conn.execute(
        "INSERT INTO users (id, subdomain, plan, state, created_at, updated_at, "
        "gateway_token_ciphertext, created_by, error) VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
        (user_id, subdomain, plan, now, now, token_ciphertext, created_by, error),
    )


async def set_gateway_token(
    conn: aiosqlite.Connection, user_id: str, ciphertext: str, now: float
) -> str | None:
    """A new gateway token; returns the server that must replace the container."""
    row = await fetch_one(conn, "SELECT server_id FROM users WHERE id = ?", (user_id,))
    if row is None:
        raise NotFound(f"no user {user_id}")
    await conn.execute(
        "UPDATE users SET gateway_token_ciphertext = ?, updated_at = ? WHERE id = ?",
        (ciphertext, now, user_id),
    )
    await events.record(conn, "token_rotated", "gateway token rotated", user_id=user_id)
    return str(row["server_id"]) if row["server_id"] else None


async def count_restart(conn: aiosqlite.Connection, user_id: str, now: float) -> str:
    """A restart of a placed user's container (its state kept): one more in the count
    the spec's hash covers. Returns the server that replaces the container."""
    row = await fetch_one(conn, "SELECT server_id, state FROM users WHERE id = ?", (user_id,))
    if row is None:
        raise NotFound(f"no user {user_id}")
    if row["state"] not in ("provisioning", "running") or row["server_id"] is None:
        raise Conflict(f"user {user_id} is {row['state']}: nothing runs", code="not_running")
    await conn.execute(
        "UPDATE users SET restarts = restarts + 1, updated_at = ? WHERE id = ?", (now, user_id)
    )
    await events.record(conn, "user_restarted", "restart asked for", user_id=user_id)
    return str(row["server_id"])


async def set_secrets(
    conn: aiosqlite.Connection,
    user_id: str,
    ciphertext: str | None,
    changed: list[str],
    now: float,
) -> str | None:
    """The user's encrypted secrets (control/users/secrets.py); the event names the
    changed names, never a value. Returns the server that must restart the container."""
    row = await fetch_one(conn, "SELECT server_id FROM users WHERE id = ?", (user_id,))
    if row is None:
        raise NotFound(f"no user {user_id}")
    await conn.execute(
        "UPDATE users SET secrets_ciphertext = ?, updated_at = ? WHERE id = ?",
        (ciphertext, now, user_id),
    )
    await events.record(
        conn, "secrets_changed", f"changed: {', '.join(changed)}", user_id=user_id, at=now
    )
    return str(row["server_id"]) if row["server_id"] else None


async def set_state(
    conn: aiosqlite.Connection, user_id: str, state: str, server: str | None, now: float
) -> None:
    await conn.execute(
        "UPDATE users SET state = ?, server_id = ?, updated_at = ? WHERE id = ?",
        (state, server, now, user_id),
    )


async def begin_move(
    conn: aiosqlite.Connection, user_id: str, source: str, target: str, now: float
) -> None:
    """Make-before-break: assigned to `target` while `source` keeps running it."""
    await conn.execute(
        "UPDATE users SET server_id = ?, moving_from = ?, state = 'provisioning', updated_at = ? "
        "WHERE id = ?",
        (target, source, now, user_id),
    )


async def deprovision(
    conn: aiosqlite.Connection, user_id: str, server: str | None, purge_after: float, now: float
) -> None:
    """Leaves its server; its data stays on that server until `purge_after`."""
    await conn.execute(
        "UPDATE users SET state = 'deprovisioned', server_id = NULL, moving_from = NULL, "
        "data_server_id = COALESCE(?, data_server_id), purge_after = ?, updated_at = ? WHERE id = ?",
        (server, purge_after, now, user_id),
    )


async def withdraw(conn: aiosqlite.Connection, user_id: str, now: float) -> str | None:
    """A provisional user nobody paid for (control/users/prestart.py) leaves its server
    with no retention: its volumes are in the server's `purge` list from the very
    generation that drops its container (the caller's bump of the returned server), and
    `advance_purges` forgets it once that is applied. Its subdomain, no DNS label (it
    has a dot), frees the name at once. No hold: a later payment creates it anew."""
    row = await fetch_one(conn, "SELECT server_id FROM users WHERE id = ?", (user_id,))
    server = row["server_id"] if row else None
    await conn.execute(
        "UPDATE users SET state = 'deprovisioned', server_id = NULL, moving_from = NULL, "
        "subdomain = id || '.withdrawn', data_server_id = ?1, purge_after = ?2, "
        "purge_generation = (SELECT generation + 1 FROM servers WHERE id = ?1), "
        "updated_at = ?2 WHERE id = ?3",
        (server, now, user_id),
    )
    return str(server) if server else None


async def mark_running(
    conn: aiosqlite.Connection, healthy: set[tuple[str, str]], now: float
) -> list[tuple[str, str, str | None]]:
    """Users their worker reports running and healthy (`healthy`: (server, user)) that
    were provisioning or moving become running. Returns (server, user, the server a
    finished move left, whose container may now go) for each."""
    ids = sorted({w for w, _ in healthy})
    marks = ", ".join("?" for _ in ids)
    candidates = await fetch_all(
        conn,
        f"SELECT id, server_id, moving_from FROM users WHERE server_id IN ({marks}) "
        "AND (state = 'provisioning' OR moving_from IS NOT NULL)",
        ids,
    )
    done: list[tuple[str, str, str | None]] = []
    for user in candidates:
        if (user["server_id"], user["id"]) not in healthy:
            continue
        await conn.execute(
            "UPDATE users SET state = 'running', moving_from = NULL, updated_at = ? WHERE id = ?",
            (now, user["id"]),
        )
        message = "container reported running and healthy"
        if user["moving_from"]:
            message += f"; move from {user['moving_from']} complete"
        await events.record(
            conn, "user_running", message, server_id=user["server_id"], user_id=user["id"], at=now
        )
        done.append((user["server_id"], user["id"], user["moving_from"]))
    return done


async def forget_suspended_on(conn: aiosqlite.Connection, server_id: str) -> None:
    """Suspended users whose data was on a server that is gone: placed anew on resume."""
    await conn.execute(
        "UPDATE users SET server_id = NULL WHERE server_id = ? AND state = 'suspended'",
        (server_id,),
    )


async def release_from(
    conn: aiosqlite.Connection, server_ids: Iterable[str], now: float
) -> list[str]:
    """Users of dead workers go back to pending so placement finds them a new home.
    A user that was moving keeps (or returns to) the side of the move still alive.
    Returns the live servers whose desired set changed, once per user."""
    touched: list[str] = []
    for server_id in server_ids:
        await forget_suspended_on(conn, server_id)
        await conn.execute(
            "UPDATE users SET moving_from = NULL WHERE moving_from = ?", (server_id,)
        )
        rows = await fetch_all(
            conn,
            "SELECT id, moving_from FROM users WHERE server_id = ? "
            "AND state IN ('provisioning', 'running')",
            (server_id,),
        )
        for row in rows:
            back = row["moving_from"]
            await conn.execute(
                "UPDATE users SET state = ?, server_id = ?, moving_from = NULL, updated_at = ? "
                "WHERE id = ?",
                ("provisioning" if back else "pending", back, now, row["id"]),
            )
            touched += [back] if back else []
            reason = f"back on {back}" if back else "replacing"
            await events.record(
                conn,
                "user_released",
                f"worker {server_id} is dead; {reason}",
                server_id=server_id,
                user_id=row["id"],
                at=now,
            )
    return touched


async def advance_purges(conn: aiosqlite.Connection, now: float) -> list[str]:
    """Deprovisioned users past their retention: ask their data server to delete the
    volumes (the caller's generation bump of the returned servers puts them in its
    `purge` list), and forget the user once the server has applied that generation,
    or at once if the server is gone."""
    rows = await fetch_all(
        conn,
        "SELECT u.id, u.data_server_id, u.purge_generation, s.status, s.generation, "
        "s.applied_generation FROM users u LEFT JOIN servers s ON s.id = u.data_server_id "
        "WHERE u.state = 'deprovisioned' AND u.purge_after IS NOT NULL AND u.purge_after <= ?",
        (now,),
    )
    notify: list[str] = []
    for row in rows:
        server = row["data_server_id"]
        gone = server is None or row["status"] in (None, "dead", "deleting", "deleted")
        if not gone and row["purge_generation"] is None:
            await conn.execute(
                "UPDATE users SET purge_generation = ? WHERE id = ?",
                (row["generation"] + 1, row["id"]),
            )
            notify.append(server)
            continue
        if gone or (row["applied_generation"] or 0) >= row["purge_generation"]:
            await conn.execute("DELETE FROM users WHERE id = ?", (row["id"],))
            why = "its server is gone" if gone else f"volumes deleted on {server}"
            await events.record(
                conn,
                "user_purged",
                f"retention over; {why}",
                server_id=server,
                user_id=row["id"],
                at=now,
            )
    return notify


# --- billing's columns (control/billing/ decides; it records the events) ------------------
async def set_billing_conflict(conn: aiosqlite.Connection, user_id: str, message: str) -> None:
    await conn.execute("UPDATE users SET billing_conflict = ? WHERE id = ?", (message, user_id))


async def link_billing(
    conn: aiosqlite.Connection,
    user_id: str,
    customer: str | None,
    subscription: str | None,
    now: float,
) -> None:
    await conn.execute(
        "UPDATE users SET stripe_customer_id = ?, stripe_subscription_id = ?, updated_at = ? "
        "WHERE id = ?",
        (customer, subscription, now, user_id),
    )


async def adopt(conn: aiosqlite.Connection, user_id: str, subdomain: str, now: float) -> None:
    """A payment makes a provisional user (control/users/prestart.py) its own: billing
    re-derives its status and verdict from here; `subdomain` is the one it paid for."""
    await conn.execute(
        "UPDATE users SET billing_status = NULL, billing_state = NULL, subdomain = ?, "
        "updated_at = ? WHERE id = ?",
        (subdomain, now, user_id),
    )


async def set_hold(conn: aiosqlite.Connection, user_id: str, hold: str | None, now: float) -> None:
    await conn.execute(
        "UPDATE users SET hold = ?, hold_at = ?, updated_at = ? WHERE id = ?",
        (hold, now, now, user_id),
    )


async def set_billing_state(conn: aiosqlite.Connection, user_id: str, verdict: str) -> None:
    await conn.execute("UPDATE users SET billing_state = ? WHERE id = ?", (verdict, user_id))


async def set_billing_status(
    conn: aiosqlite.Connection,
    user_id: str,
    status: str | None,
    past_due_since: float | None,
    plan: str,
    now: float,
) -> None:
    await conn.execute(
        "UPDATE users SET billing_status = ?, past_due_since = ?, plan = ?, updated_at = ? "
        "WHERE id = ?",
        (status, past_due_since, plan, now, user_id),
    )


async def set_error(conn: aiosqlite.Connection, user_id: str, error: str | None) -> None:
    await conn.execute("UPDATE users SET error = ? WHERE id = ?", (error, user_id))
