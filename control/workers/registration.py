"""Workers' side of the store: bootstrap tokens, registration, liveness.

Each public coroutine is one transaction (via `Store.write`) and records what it
decided in the event log. Tokens are stored by id only: their secret is derived
from INTERNAL_SECRET (control/keyring.py), and a token is consumed atomically by
the registration that uses it.

Contract:
- Registration succeeds only for a token that is known, unused, unexpired and not
  revoked, and (for a token bound to a created server) only while that server is
  `provisioning`: a server that was deleted, or is dead, never comes back by
  registering (403 `server_not_provisioning`). Every path that retires a server
  calls `revoke_tokens` (control/capacity/scaler.py's `_set_status`, and the liveness sweep).
- The capacity stored at registration is the claim clamped to what the control
  plane knows (control/workers/trust.py); an over-claim is flagged, not trusted.
"""

from __future__ import annotations

import logging
import secrets
import string
import time
from dataclasses import dataclass

import aiosqlite

from control.db import events
from control.db.store import Row, Store, fetch_all, fetch_one
from control.errors import Forbidden, Unauthorized
from control.keyring import Keyring
from control.workers import liveness, trust
from control.workers.auth import AgentCaller
from control.workers.trust import Capacity, Stated
from shared.protocol import RegisterRequest

log = logging.getLogger(__name__)
_ALPHABET = string.ascii_lowercase + string.digits
# A server in one of these never takes users again; its bootstrap tokens are revoked.
RETIRED_STATUSES = ("dead", "deleting", "deleted")


def new_id(length: int = 12) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_server_id() -> str:
    return f"srv-{new_id()}"


@dataclass(frozen=True)
class MintedToken:
    token: str
    token_id: str
    expires_at: float


async def mint_token(
    store: Store,
    keyring: Keyring,
    ttl: float,
    server_id: str | None = None,
    stated: Stated | None = None,
) -> MintedToken:
    """A one-time bootstrap token. Bound to `server_id` when the control plane created
    that server; unbound (an admin join token) when an operator brings a server, with
    the resources the operator `stated` for it (the ceiling of what it may claim)."""
    token_id = new_id()
    now = time.time()
    stated = stated or Stated()

    async def insert(conn: aiosqlite.Connection) -> None:
        await conn.execute(
            "INSERT INTO bootstrap_tokens (id, server_id, created_at, expires_at, cpus, "
            "memory_mb, disk_gb) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (token_id, server_id, now, now + ttl, *stated.values()),
        )
        kind = "bootstrap token minted" if server_id else "join token minted"
        if not server_id and stated.unstated():
            kind += f" (not stated: {', '.join(stated.unstated())}; held to its first claim)"
        await events.record(conn, "token_minted", f"{kind} {token_id}", server_id=server_id, at=now)

    await store.write(insert)
    return MintedToken(f"{token_id}.{keyring.bootstrap_secret(token_id)}", token_id, now + ttl)


@dataclass(frozen=True)
class Registered:
    worker_id: str
    secret: str


async def register(
    store: Store, keyring: Keyring, caller: AgentCaller, req: RegisterRequest, interval: float
) -> Registered:
    secret = keyring.new_secret()
    ciphertext = keyring.encrypt(secret)
    now = time.time()
    claim = Capacity(req.resources.cpus, req.resources.memory_mb, req.resources.disk_gb)

    async def apply(conn: aiosqlite.Connection) -> str:
        token = await _usable_token(conn, caller.key_id, now)
        worker_id = token["server_id"] or new_server_id()
        if token["server_id"] is None:
            await conn.execute(
                "INSERT INTO servers (id, name, status, origin, created_at, status_changed_at) "
                "VALUES (?, ?, 'provisioning', 'join', ?, ?)",
                (worker_id, worker_id, now, now),
            )
            stated = Stated(token["cpus"], token["memory_mb"], token["disk_gb"])
            source = "stated on the join token"
        else:
            server = await _provisioning_server(conn, worker_id)
            stated = Stated(
                server["known_cpus"], server["known_memory_mb"], server["known_disk_gb"]
            )
            source = server["capacity_source"] or "server type"
        ceiling = stated.ceiling(claim)
        trusted, overclaim = trust.trust(claim, ceiling)
        await conn.execute(
            "UPDATE bootstrap_tokens SET consumed_at = ? WHERE id = ?", (now, caller.key_id)
        )
        await conn.execute(
            "UPDATE servers SET status = 'active', status_changed_at = ?, registered_at = ?, "
            "hostname = ?, agent_version = ?, cpus = ?, memory_mb = ?, disk_gb = ?, "
            "known_cpus = ?, known_memory_mb = ?, known_disk_gb = ?, capacity_source = ?, "
            "secret_ciphertext = ?, generation = 1, heartbeat_interval = ? WHERE id = ?",
            (
                now,
                now,
                req.hostname,
                req.agent_version,
                trusted.cpus,
                trusted.memory_mb,
                trusted.disk_gb,
                ceiling.cpus,
                ceiling.memory_mb,
                ceiling.disk_gb,
                trust.describe_source(source, stated),
                ciphertext,
                interval,
                worker_id,
            ),
        )
        await caller.persist_nonce(conn)
        await events.record(
            conn,
            "worker_registered",
            f"{req.hostname} registered (agent {req.agent_version}, "
            f"{trusted.cpus} cpus, {trusted.memory_mb} MB)",
            server_id=worker_id,
            at=now,
        )
        if overclaim:
            await trust.flag_overclaim(conn, worker_id, overclaim, now)
        return worker_id

    worker_id = await store.write(apply)
    return Registered(worker_id, secret)


async def _usable_token(conn: aiosqlite.Connection, token_id: str, now: float) -> Row:
    token = await fetch_one(conn, "SELECT * FROM bootstrap_tokens WHERE id = ?", (token_id,))
    if token is None:
        raise Unauthorized("unknown bootstrap token", code="unknown_token")
    if token["consumed_at"] is not None:
        log.warning("bootstrap token %s presented again after use: possible theft", token_id)
        raise Unauthorized("bootstrap token already used", code="token_used")
    if token["revoked_at"] is not None:
        log.warning("revoked bootstrap token %s presented: its server was retired", token_id)
        raise Unauthorized("bootstrap token revoked", code="token_revoked")
    if token["expires_at"] < now:
        raise Unauthorized("bootstrap token expired", code="token_expired")
    return token


async def _provisioning_server(conn: aiosqlite.Connection, server_id: str) -> Row:
    """Only a server waiting for its agent may register: never a retired one."""
    server = await fetch_one(conn, "SELECT * FROM servers WHERE id = ?", (server_id,))
    if server is None or server["status"] != "provisioning":
        status = server["status"] if server is not None else "unknown"
        log.warning("server %s (status %s) tried to register again", server_id, status)
        raise Forbidden(
            f"server {server_id} is {status}, not provisioning: it cannot register",
            code="server_not_provisioning",
        )
    return server


async def revoke_tokens(conn: aiosqlite.Connection, server_id: str, now: float) -> None:
    """Every unused bootstrap token of a retired server stops working. The one place
    that does this: every path that retires a server calls it."""
    await conn.execute(
        "UPDATE bootstrap_tokens SET revoked_at = ? WHERE server_id = ? "
        "AND consumed_at IS NULL AND revoked_at IS NULL",
        (now, server_id),
    )


@dataclass(frozen=True)
class Swept:
    dead: list[str]  # newly dead: their users must be released
    unhealthy: list[str]  # newly unhealthy: a heartbeat that revives one makes room
    active: list[str]  # back to active: room may have appeared


async def sweep_liveness(store: Store, now: float, started_at: float, dead_after: float) -> Swept:
    """Applies `liveness.next_status` to every live worker."""

    async def apply(conn: aiosqlite.Connection) -> Swept:
        rows = await fetch_all(
            conn,
            "SELECT id, status, last_heartbeat, registered_at, heartbeat_interval FROM servers "
            "WHERE status IN ('active', 'unhealthy')",
        )
        swept = Swept([], [], [])
        for row in rows:
            last_seen = row["last_heartbeat"] or row["registered_at"] or 0.0
            new = liveness.next_status(
                row["status"],
                last_seen,
                now,
                interval=row["heartbeat_interval"],
                dead_after=dead_after,
                started_at=started_at,
            )
            if new == row["status"]:
                continue
            await conn.execute(
                "UPDATE servers SET status = ?, status_changed_at = ? WHERE id = ?",
                (new, now, row["id"]),
            )
            age = now - max(last_seen, started_at)
            await events.record(
                conn,
                "worker_status",
                f"{row['status']} -> {new}: no heartbeat for {age:.0f}s",
                server_id=row["id"],
                at=now,
            )
            if new == "dead":
                await revoke_tokens(conn, row["id"], now)
                swept.dead.append(row["id"])
            else:
                (swept.unhealthy if new == "unhealthy" else swept.active).append(row["id"])
        return swept

    return await store.write(apply)
