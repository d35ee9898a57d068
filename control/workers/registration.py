"""Registration: a worker presents its one-time bootstrap token and becomes an active
server with its own secret.

Contract:
- A request for another protocol version than 1 is a 400 `unsupported_protocol`.
- Registration succeeds only for a token that is known, unused, unexpired and not
  revoked (control/workers/tokens.py), and (for a token bound to a created server)
  only while that server is `provisioning`: a server that was deleted, or is dead,
  never comes back by registering (403 `server_not_provisioning`).
- One transaction consumes the token, stores the server's capacity, its encrypted
  secret and the request's nonce, and records `worker_registered`.
- The capacity stored is the claim clamped to what the control plane knows
  (control/workers/trust.py); an over-claim is flagged, not trusted.
- The agent features stored are the ones it declared that the protocol knows
  (control/users/features.py); unknown names are dropped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import aiosqlite

from control.db import events
from control.db.store import Row, Store, fetch_one
from control.errors import BadRequest, Forbidden
from control.keyring import Keyring
from control.users import features
from control.workers import servers, tokens, trust
from control.workers.auth import AgentCaller
from control.workers.trust import Capacity, Stated
from shared.protocol import RegisterRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registered:
    worker_id: str
    secret: str


async def register(
    store: Store, keyring: Keyring, caller: AgentCaller, req: RegisterRequest, interval: float
) -> Registered:
    if req.protocol != 1:
        raise BadRequest(
            f"protocol {req.protocol} is not supported (this control plane speaks 1)",
            code="unsupported_protocol",
        )
    secret = keyring.new_secret()
    ciphertext = keyring.encrypt(secret)
    now = time.time()
    claim = Capacity(req.resources.cpus, req.resources.memory_mb, req.resources.disk_gb)

    async def apply(conn: aiosqlite.Connection) -> str:
        token = await tokens.usable(conn, caller.key_id, now)
        worker_id, stated, source = await _server_for(conn, token, now)
        ceiling = stated.ceiling(claim)
        trusted, overclaim = trust.trust(claim, ceiling)
        await tokens.consume(conn, caller.key_id, now)
        await servers.mark_registered(
            conn,
            worker_id,
            now=now,
            agent=(req.hostname, req.agent_version, features.stored(req.features)),
            trusted=trusted,
            ceiling=ceiling,
            source=trust.describe_source(source, stated),
            secret_ciphertext=ciphertext,
            interval=interval,
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
            await servers.flag_overclaim(conn, worker_id, overclaim, now)
        return worker_id

    worker_id = await store.write(apply)
    return Registered(worker_id, secret)


async def _server_for(
    conn: aiosqlite.Connection, token: Row, now: float
) -> tuple[str, Stated, str]:
    """The server a token registers (a joined one is created now), what is known of
    its resources, and where that knowledge came from."""
    if token["server_id"] is None:
        worker_id = servers.new_server_id()
        await servers.insert_joined(conn, worker_id, now)
        stated = Stated(token["cpus"], token["memory_mb"], token["disk_gb"])
        return worker_id, stated, "stated on the join token"
    server = await _provisioning_server(conn, token["server_id"])
    stated = Stated(server["known_cpus"], server["known_memory_mb"], server["known_disk_gb"])
    return server["id"], stated, server["capacity_source"] or "server type"


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
