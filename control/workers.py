"""Workers' side of the store: bootstrap tokens, registration, liveness.

Each public coroutine is one transaction (via `Store.write`) and records what it
decided in the event log. Tokens are stored by id only: their secret is derived
from INTERNAL_SECRET (control/keyring.py), and a token is consumed atomically by
the registration that uses it.
"""

from __future__ import annotations

import logging
import secrets
import string
import time
from dataclasses import dataclass

import aiosqlite

from control import events, liveness
from control.agent_auth import AgentCaller
from control.errors import Unauthorized
from control.keyring import Keyring
from control.store import Store, fetch_all, fetch_one
from shared.protocol import RegisterRequest

log = logging.getLogger(__name__)
_ALPHABET = string.ascii_lowercase + string.digits


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
    store: Store, keyring: Keyring, ttl: float, server_id: str | None = None
) -> MintedToken:
    """A one-time bootstrap token. Bound to `server_id` when the control plane created
    that server; unbound (an admin join token) when an operator brings a server."""
    token_id = new_id()
    now = time.time()

    async def insert(conn: aiosqlite.Connection) -> None:
        await conn.execute(
            "INSERT INTO bootstrap_tokens (id, server_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
            (token_id, server_id, now, now + ttl),
        )
        kind = "bootstrap token minted" if server_id else "join token minted"
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

    async def apply(conn: aiosqlite.Connection) -> str:
        token = await fetch_one(
            conn, "SELECT * FROM bootstrap_tokens WHERE id = ?", (caller.key_id,)
        )
        if token is None:
            raise Unauthorized("unknown bootstrap token", code="unknown_token")
        if token["consumed_at"] is not None:
            log.warning(
                "bootstrap token %s presented again after use: possible theft", caller.key_id
            )
            raise Unauthorized("bootstrap token already used", code="token_used")
        if token["expires_at"] < now:
            raise Unauthorized("bootstrap token expired", code="token_expired")
        worker_id = token["server_id"] or new_server_id()
        if token["server_id"] is None:
            await conn.execute(
                "INSERT INTO servers (id, name, status, origin, created_at, status_changed_at) "
                "VALUES (?, ?, 'provisioning', 'join', ?, ?)",
                (worker_id, worker_id, now, now),
            )
        await conn.execute(
            "UPDATE bootstrap_tokens SET consumed_at = ? WHERE id = ?", (now, caller.key_id)
        )
        await conn.execute(
            "UPDATE servers SET status = 'active', status_changed_at = ?, registered_at = ?, "
            "hostname = ?, agent_version = ?, cpus = ?, memory_mb = ?, disk_gb = ?, "
            "secret_ciphertext = ?, generation = 1, heartbeat_interval = ? WHERE id = ?",
            (
                now,
                now,
                req.hostname,
                req.agent_version,
                req.resources.cpus,
                req.resources.memory_mb,
                req.resources.disk_gb,
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
            f"{req.resources.cpus} cpus, {req.resources.memory_mb} MB)",
            server_id=worker_id,
            at=now,
        )
        return worker_id

    worker_id = await store.write(apply)
    return Registered(worker_id, secret)


async def sweep_liveness(
    store: Store, now: float, started_at: float, dead_after: float
) -> list[str]:
    """Applies `liveness.next_status` to every live worker; returns the ids newly dead."""

    async def apply(conn: aiosqlite.Connection) -> list[str]:
        rows = await fetch_all(
            conn,
            "SELECT id, status, last_heartbeat, registered_at, heartbeat_interval FROM servers "
            "WHERE status IN ('active', 'unhealthy')",
        )
        dead: list[str] = []
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
                dead.append(row["id"])
        return dead

    return await store.write(apply)
