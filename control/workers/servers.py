"""The `servers` table's only writer: every INSERT and UPDATE of a server row.

Contract:
- Each function writes in the caller's transaction (it takes the connection); the
  caller records the decision's event, except where noted.
- `set_status` is the one way a server's status changes; a server moved to one of
  RETIRED_STATUSES has its unused bootstrap tokens revoked in the same transaction
  (control/workers/tokens.py), so a retired server can never register again.
- `bump_generation` is called once per change to the server's desired set, in the
  transaction of that change; the caller then wakes its long-poll
  (control/workers/assignments.py).
- Reads the facade needs (how many live workers, which are unhealthy) live here too,
  so no SQL on this table is written anywhere else.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import aiosqlite

from control.db import events
from control.db.store import Store, fetch_one
from control.errors import NotFound
from control.workers import tokens
from control.workers.trust import Capacity, Stated

# A server in one of these never takes users again; its bootstrap tokens are revoked.
RETIRED_STATUSES = ("dead", "deleting", "deleted")
# An operator's flags; each statement is the whole meaning of its action.
FLAGS = {
    "cordon": "UPDATE servers SET cordoned = 1 WHERE id = ?",
    # Uncordoning is also how an operator clears an over-claim flag (control/workers/trust.py).
    "uncordon": "UPDATE servers SET cordoned = 0, overclaim = NULL, overclaim_at = NULL "
    "WHERE id = ?",
    # Draining implies cordoned: nothing new lands on a server being emptied.
    "drain": "UPDATE servers SET draining = 1, cordoned = 1 WHERE id = ?",
}


def new_server_id() -> str:
    return f"srv-{tokens.new_id()}"


async def insert_joined(conn: aiosqlite.Connection, server_id: str, now: float) -> None:
    """A server an operator brought with a join token, as its agent first registers."""
    await conn.execute(
        "INSERT INTO servers (id, name, status, origin, created_at, status_changed_at) "
        "VALUES (?, ?, 'provisioning', 'join', ?, ?)",
        (server_id, server_id, now, now),
    )


async def insert_created(
    conn: aiosqlite.Connection,
    server_id: str,
    name: str,
    provider: str,
    pair: tuple[str, str],
    now: float,
) -> None:
    """A server the autoscaler is about to create (recorded before the provider call)."""
    await conn.execute(
        "INSERT INTO servers (id, name, status, origin, provider, server_type, location, "
        "created_at, status_changed_at, create_requested_at) "
        "VALUES (?, ?, 'provisioning', 'provider', ?, ?, ?, ?, ?, ?)",
        (server_id, name, provider, pair[0], pair[1], now, now, now),
    )


async def confirm_created(
    conn: aiosqlite.Connection,
    server_id: str,
    provider_id: str,
    ip: str | None,
    pair: tuple[str, str],
    now: float,
) -> None:
    await conn.execute(
        "UPDATE servers SET provider_id = ?, public_ip = ?, server_type = ?, location = ?, "
        "create_confirmed_at = ? WHERE id = ?",
        (provider_id, ip, pair[0], pair[1], now, server_id),
    )


async def mark_registered(
    conn: aiosqlite.Connection,
    server_id: str,
    *,
    now: float,
    agent: tuple[str, str, str],  # (hostname, agent version, its stored features)
    trusted: Capacity,
    ceiling: Capacity,
    source: str,
    secret_ciphertext: str,
    interval: float,
) -> None:
    await conn.execute(
        "UPDATE servers SET status = 'active', status_changed_at = ?, registered_at = ?, "
        "hostname = ?, agent_version = ?, features = ?, cpus = ?, memory_mb = ?, disk_gb = ?, "
        "known_cpus = ?, known_memory_mb = ?, known_disk_gb = ?, capacity_source = ?, "
        "secret_ciphertext = ?, generation = 1, heartbeat_interval = ? WHERE id = ?",
        (
            now,
            now,
            *agent,
            trusted.cpus,
            trusted.memory_mb,
            trusted.disk_gb,
            ceiling.cpus,
            ceiling.memory_mb,
            ceiling.disk_gb,
            source,
            secret_ciphertext,
            interval,
            server_id,
        ),
    )


async def record_heartbeats(conn: aiosqlite.Connection, rows: Iterable[Sequence[object]]) -> None:
    """One row per heartbeat: (now, agent version, stored features, applied generation,
    cpus, memory_mb, disk_gb, report, interval, now, server id). An unhealthy worker is
    active again."""
    await conn.executemany(
        "UPDATE servers SET last_heartbeat = ?, agent_version = ?, features = ?, "
        "applied_generation = ?, cpus = ?, "
        "memory_mb = ?, disk_gb = ?, report = ?, heartbeat_interval = ?, "
        "status = CASE WHEN status IN ('active', 'unhealthy') THEN 'active' ELSE status END, "
        "status_changed_at = CASE WHEN status = 'unhealthy' THEN ? ELSE status_changed_at END WHERE id = ?",
        rows,
    )


async def set_status(conn: aiosqlite.Connection, server_id: str, status: str, now: float) -> None:
    extra = ", deleted_at = ?" if status == "deleted" else ""
    params: tuple[object, ...] = (
        (status, now, now, server_id) if extra else (status, now, server_id)
    )
    await conn.execute(
        f"UPDATE servers SET status = ?, status_changed_at = ?{extra} WHERE id = ?", params
    )
    if status in RETIRED_STATUSES:
        # Its user data still carries a bootstrap token: it must not register.
        await tokens.revoke_for(conn, server_id, now)


async def bump_generation(conn: aiosqlite.Connection, server_id: str) -> None:
    await conn.execute("UPDATE servers SET generation = generation + 1 WHERE id = ?", (server_id,))


async def set_flag(conn: aiosqlite.Connection, server_id: str, action: str) -> None:
    """An operator's cordon, uncordon or drain (FLAGS), with its event."""
    if await fetch_one(conn, "SELECT 1 FROM servers WHERE id = ?", (server_id,)) is None:
        raise NotFound(f"no server {server_id}")
    await conn.execute(FLAGS[action], (server_id,))
    await events.record(
        conn, f"server_{action}", f"operator asked to {action}", server_id=server_id
    )


async def flag_overclaim(
    conn: aiosqlite.Connection, server_id: str, message: str, now: float
) -> bool:
    """Flags and cordons a server the first time it over-claims (control/workers/trust.py),
    with its event; True if newly flagged."""
    async with conn.execute(  # `async with`: sent now, for its row count
        "UPDATE servers SET overclaim = ?, overclaim_at = ?, cordoned = 1 "
        "WHERE id = ? AND overclaim IS NULL",
        (message, now, server_id),
    ) as cursor:
        if cursor.rowcount != 1:
            return False
    await events.record(
        conn,
        "worker_overclaim",
        f"{message}; cordoned: no more users until an operator uncordons it",
        server_id=server_id,
        at=now,
    )
    return True


async def set_known(
    conn: aiosqlite.Connection, server_id: str, stated: Stated, source: str
) -> None:
    """What the control plane knows of a server (a created server's type)."""
    await conn.execute(
        "UPDATE servers SET known_cpus = ?, known_memory_mb = ?, known_disk_gb = ?, "
        "capacity_source = ? WHERE id = ?",
        (*stated.values(), source, server_id),
    )


async def track_empty(conn: aiosqlite.Connection, holders_sql: str, now: float) -> None:
    """`empty_since` follows whether any user holds the server (`holders_sql`)."""
    await conn.execute(
        f"UPDATE servers SET empty_since = NULL WHERE empty_since IS NOT NULL "
        f"AND id IN (SELECT holder FROM ({holders_sql}))"
    )
    await conn.execute(
        f"UPDATE servers SET empty_since = ? WHERE status = 'active' AND empty_since IS NULL "
        f"AND id NOT IN (SELECT holder FROM ({holders_sql}))",
        (now,),
    )


async def clear_empty(conn: aiosqlite.Connection, server_id: str) -> None:
    await conn.execute("UPDATE servers SET empty_since = NULL WHERE id = ?", (server_id,))


async def cordon(conn: aiosqlite.Connection, server_id: str) -> None:
    await conn.execute("UPDATE servers SET cordoned = 1 WHERE id = ?", (server_id,))


async def live_count(store: Store) -> int:
    row = await store.fetch_one(
        "SELECT COUNT(*) AS n FROM servers WHERE status IN ('active', 'unhealthy')"
    )
    return int(row["n"]) if row else 0


async def unhealthy_ids(store: Store) -> set[str]:
    rows = await store.fetch_all("SELECT id FROM servers WHERE status = 'unhealthy'")
    return {r["id"] for r in rows}
