"""Users' side of the store: creating, placing and removing users.

Every change to a worker's desired set bumps that worker's generation in the same
transaction; the caller then wakes the worker's long-poll (control/workers/assignments.py)
with the server ids these functions return.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import aiosqlite

from control.db import events
from control.db.store import Store, fetch_all, fetch_one
from control.errors import BadRequest, Conflict, NotFound
from control.users.placement import Demand, Room, place
from control.users.plans import Plan, plan_of

USER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
SUBDOMAIN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
RESERVED_SUBDOMAINS = frozenset(
    {
        "www",
        "api",
        "admin",
        "mail",
        "smtp",
        "imap",
        "pop",
        "ftp",
        "ns1",
        "ns2",
        "dashboard",
        "app",
        "status",
        "metrics",
        "control",
        "webhook",
        "webhooks",
        "auth",
        "login",
        "static",
    }
)
ASSIGNED_STATES = ("provisioning", "running")


def validate_user_id(user_id: str) -> str:
    if not USER_ID.fullmatch(user_id):
        raise BadRequest(
            "user_id: 1-63 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit"
        )
    return user_id


def validate_subdomain(subdomain: str) -> str:
    if not SUBDOMAIN.fullmatch(subdomain):
        raise BadRequest(
            "subdomain: a DNS label of 1-63 characters a-z 0-9 -, not starting or ending with -"
        )
    if subdomain in RESERVED_SUBDOMAINS:
        raise BadRequest(f"subdomain: {subdomain!r} is reserved")
    return subdomain


async def bump_generation(conn: aiosqlite.Connection, server_id: str) -> None:
    await conn.execute("UPDATE servers SET generation = generation + 1 WHERE id = ?", (server_id,))


async def create(
    store: Store, user_id: str, subdomain: str, plan: Plan, gateway_token_ciphertext: str
) -> None:
    now = time.time()

    async def apply(conn: aiosqlite.Connection) -> None:
        if await fetch_one(conn, "SELECT 1 FROM users WHERE id = ?", (user_id,)):
            raise Conflict(f"user {user_id} already exists", code="user_exists")
        if await fetch_one(conn, "SELECT 1 FROM users WHERE subdomain = ?", (subdomain,)):
            raise Conflict(f"subdomain {subdomain} is taken", code="subdomain_taken")
        await conn.execute(
            "INSERT INTO users (id, subdomain, plan, state, created_at, updated_at, gateway_token_ciphertext) "
            "VALUES (?, ?, ?, 'pending', ?, ?, ?)",
            (user_id, subdomain, plan.name, now, now, gateway_token_ciphertext),
        )
        await events.record(
            conn,
            "user_created",
            f"plan {plan.name}, subdomain {subdomain}",
            user_id=user_id,
            at=now,
        )

    await store.write(apply)


@dataclass(frozen=True)
class Reserve:
    """What each server keeps for itself before users get any of it."""

    memory_mb: int = 0
    cpus: float = 0.0


@dataclass(frozen=True)
class PlacementResult:
    placed: dict[str, str]  # user id -> server id
    pending: list[str]

    @property
    def touched_servers(self) -> set[str]:
        return set(self.placed.values())


async def place_pending(store: Store, plans: dict[str, Plan], reserve: Reserve) -> PlacementResult:
    """Places every pending user that fits somewhere, oldest first."""
    now = time.time()

    async def apply(conn: aiosqlite.Connection) -> PlacementResult:
        pending = await fetch_all(
            # A user with an error (e.g. an unknown Stripe price) waits for the operator.
            conn,
            "SELECT id, plan FROM users WHERE state = 'pending' AND error IS NULL ORDER BY created_at, id",
        )
        if not pending:
            return PlacementResult({}, [])
        demands = [
            Demand(u["id"], plan_of(plans, u["plan"]).memory_mb, plan_of(plans, u["plan"]).cpus)
            for u in pending
        ]
        placed, waiting = place(demands, await rooms(conn, plans, reserve))
        for user_id, server_id in placed.items():
            await conn.execute(
                "UPDATE users SET state = 'provisioning', server_id = ?, updated_at = ? WHERE id = ?",
                (server_id, now, user_id),
            )
            await bump_generation(conn, server_id)
            await events.record(
                conn,
                "user_placed",
                f"placed on {server_id}",
                server_id=server_id,
                user_id=user_id,
                at=now,
            )
        return PlacementResult(placed, waiting)

    return await store.write(apply)


async def rooms(
    conn: aiosqlite.Connection,
    plans: dict[str, Plan],
    reserve: Reserve,
    statuses: tuple[str, ...] = ("active",),
) -> list[Room]:
    """Room on servers in `statuses`. A user counts against every server that holds its
    container: its own and, during a move, the one it is leaving."""
    marks = ", ".join("?" for _ in statuses)
    servers = await fetch_all(
        conn,
        "SELECT id, status, cordoned, draining, overclaim, memory_mb, cpus FROM servers "
        f"WHERE status IN ({marks})",
        statuses,
    )
    used: dict[str, tuple[int, float]] = {}
    for row in await fetch_all(conn, HOLDERS_SQL):
        plan = plan_of(plans, row["plan"])
        mem, cpu = used.get(row["holder"], (0, 0.0))
        used[row["holder"]] = (mem + plan.memory_mb, cpu + plan.cpus)
    return [
        Room(
            server_id=s["id"],
            accepts_work=s["status"] == "active"
            and not s["cordoned"]
            and not s["draining"]
            # Over-claimed (control/workers/trust.py): no users until an operator clears it.
            and s["overclaim"] is None,
            memory_total_mb=max(0, (s["memory_mb"] or 0) - reserve.memory_mb),
            memory_used_mb=used.get(s["id"], (0, 0.0))[0],
            cpus_total=max(0.0, (s["cpus"] or 0) - reserve.cpus),
            cpus_used=used.get(s["id"], (0, 0.0))[1],
        )
        for s in servers
    ]


# Every (server, user) pair whose container the server must run.
HOLDERS_SQL = (
    "SELECT server_id AS holder, id, plan FROM users WHERE server_id IS NOT NULL "
    # A suspended user keeps its room: paying again brings it back on the same server.
    "AND state IN ('provisioning', 'running', 'suspended') "
    "UNION ALL SELECT moving_from AS holder, id, plan FROM users WHERE moving_from IS NOT NULL"
)


# Every (server, kind) whose disk holds user data that must outlive the container:
# a deprovisioned user's volumes until purged, a suspended user's until it resumes.
HELD_DATA_SQL = (
    "SELECT data_server_id AS holder, 'retained' AS kind, purge_after FROM users "
    "WHERE state = 'deprovisioned' AND data_server_id IS NOT NULL "
    "UNION ALL SELECT server_id AS holder, 'suspended' AS kind, NULL AS purge_after "
    "FROM users WHERE state = 'suspended' AND server_id IS NOT NULL"
)


async def release_from(store: Store, server_ids: list[str]) -> set[str]:
    """Users of dead workers go back to pending so placement finds them a new home.
    A user that was moving keeps (or returns to) the side of the move still alive.
    Returns the live servers whose desired set changed."""
    if not server_ids:
        return set()
    now = time.time()

    async def apply(conn: aiosqlite.Connection) -> set[str]:
        touched: set[str] = set()
        for server_id in server_ids:
            # Their data was on the dead server; on resume they are placed anew.
            await conn.execute(
                "UPDATE users SET server_id = NULL WHERE server_id = ? AND state = 'suspended'",
                (server_id,),
            )
            await conn.execute(
                "UPDATE users SET moving_from = NULL WHERE moving_from = ?", (server_id,)
            )
            rows = await fetch_all(
                conn,
                "SELECT id, moving_from FROM users WHERE server_id = ? AND state IN ('provisioning', 'running')",
                (server_id,),
            )
            for row in rows:
                back = row["moving_from"]
                await conn.execute(
                    "UPDATE users SET state = ?, server_id = ?, moving_from = NULL, updated_at = ? WHERE id = ?",
                    ("provisioning" if back else "pending", back, now, row["id"]),
                )
                if back:
                    await bump_generation(conn, back)
                    touched.add(back)
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

    return await store.write(apply)


async def advance_purges(conn: aiosqlite.Connection, now: float) -> list[str]:
    """Deprovisioned users past their retention: ask their data server to delete the
    volumes (a generation bump puts them in its `purge` list), and forget the user once
    the server has applied that generation, or at once if the server is gone."""
    rows = await fetch_all(
        conn,
        "SELECT u.id, u.data_server_id, u.purge_generation, s.status, s.generation, s.applied_generation "
        "FROM users u LEFT JOIN servers s ON s.id = u.data_server_id "
        "WHERE u.state = 'deprovisioned' AND u.purge_after IS NOT NULL AND u.purge_after <= ?",
        (now,),
    )
    notify: list[str] = []
    for row in rows:
        server = row["data_server_id"]
        gone = server is None or row["status"] in (None, "dead", "deleting", "deleted")
        if not gone and row["purge_generation"] is None:
            await bump_generation(conn, server)
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


async def start_move(
    conn: aiosqlite.Connection,
    plans: dict[str, Plan],
    reserve: Reserve,
    user_id: str,
    target: str | None,
    reason: str,
) -> str | None:
    """Make-before-break: the user is assigned to `target` (or the best fit elsewhere)
    while its old server keeps running it until the new container reports healthy
    (control/workers/heartbeats.py). Returns the target, or None when nothing has room."""
    user = await fetch_one(conn, "SELECT * FROM users WHERE id = ?", (user_id,))
    if user is None:
        raise NotFound(f"no user {user_id}")
    source = user["server_id"]
    if user["state"] not in ("provisioning", "running") or source is None:
        raise Conflict(
            f"user {user_id} is {user['state']}: only a placed user can move", code="not_movable"
        )
    if user["moving_from"] is not None:
        raise Conflict(
            f"user {user_id} is already moving from {user['moving_from']}", code="move_in_progress"
        )
    if target == source:
        raise Conflict(f"user {user_id} is already on {source}", code="same_server")
    candidates = [r for r in await rooms(conn, plans, reserve) if r.server_id != source]
    if target is not None:
        candidates = [r for r in candidates if r.server_id == target]
        if not candidates:
            raise Conflict(
                f"server {target} is not active and accepting work", code="target_unavailable"
            )
    plan = plan_of(plans, user["plan"])
    placed, _ = place([Demand(user_id, plan.memory_mb, plan.cpus)], candidates)
    chosen = placed.get(user_id)
    if chosen is None:
        if target is not None:
            raise Conflict(f"server {target} has no room for plan {plan.name}", code="no_room")
        return None
    await conn.execute(
        "UPDATE users SET server_id = ?, moving_from = ?, state = 'provisioning', updated_at = ? WHERE id = ?",
        (chosen, source, time.time(), user_id),
    )
    await bump_generation(conn, chosen)
    await events.record(
        conn, "user_moving", f"{reason}: {source} -> {chosen}", server_id=source, user_id=user_id
    )
    return chosen
