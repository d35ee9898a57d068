"""Bootstrap tokens: the only writer of the `bootstrap_tokens` table.

Contract: a token is stored by id only; its secret is derived from INTERNAL_SECRET
(control/keyring.py). `usable` refuses a token that is unknown, used, revoked or
expired (401, writing nothing); `consume` marks it used in the registration's own
transaction, so a token registers at most one worker. `revoke_for` is called by
control/workers/servers.py's `set_status` whenever a server is retired, the one path
every retirement takes.
"""

from __future__ import annotations

import logging
import secrets
import string
import time
from dataclasses import dataclass

import aiosqlite

from control.db import events
from control.db.store import Row, Store, fetch_one
from control.errors import Unauthorized
from control.keyring import Keyring
from control.workers.trust import Stated

log = logging.getLogger(__name__)
_ALPHABET = string.ascii_lowercase + string.digits


def new_id(length: int = 12) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


@dataclass(frozen=True)
class MintedToken:
    token: str
    token_id: str
    expires_at: float


async def mint(
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


async def for_server(store: Store, keyring: Keyring, server_id: str, ttl: float) -> str:
    """The bootstrap token of a server the control plane creates: the one already
    minted for it (a retried create boots the same user data), else a new one."""
    row = await store.fetch_one("SELECT id FROM bootstrap_tokens WHERE server_id = ?", (server_id,))
    if row is not None:
        return f"{row['id']}.{keyring.bootstrap_secret(row['id'])}"
    return (await mint(store, keyring, ttl, server_id=server_id)).token


async def usable(conn: aiosqlite.Connection, token_id: str, now: float) -> Row:
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


async def consume(conn: aiosqlite.Connection, token_id: str, now: float) -> None:
    await conn.execute("UPDATE bootstrap_tokens SET consumed_at = ? WHERE id = ?", (now, token_id))


async def revoke_for(conn: aiosqlite.Connection, server_id: str, now: float) -> None:
    """Every unused bootstrap token of a retired server stops working."""
    await conn.execute(
        "UPDATE bootstrap_tokens SET revoked_at = ? WHERE server_id = ? "
        "AND consumed_at IS NULL AND revoked_at IS NULL",
        (now, server_id),
    )
