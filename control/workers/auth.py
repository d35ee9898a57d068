"""Authenticates signed worker requests (docs/protocol.md).

Contract: `bootstrap`/`worker` either return the caller's identity or raise
`Unauthorized` (401) / `Forbidden` (403, revoked worker) having written nothing.
Every signed header must appear exactly once and match its shape in full (ASCII
only), and the request target must be ASCII, so malformed input is a 401 like any
bad signature, never an exception. Timestamps are compared in whole seconds
(`signing.is_fresh`) against an injectable clock. The nonce is reserved in memory
here; the handler persists it in the same transaction as its own writes
(`AgentCaller.persist_nonce`), after its own checks, so a refused request writes
nothing. Reasons are logged with the key id, never with a secret.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiosqlite
from aiohttp import web

from control.db.store import Store
from control.errors import Forbidden, Unauthorized
from control.keyring import Keyring, SecretUnreadable
from control.workers import nonces
from control.workers.nonces import NonceLedger
from control.workers.servers import RETIRED_STATUSES
from shared import signing
from shared.protocol import WORKER_ID_PATTERN

log = logging.getLogger(__name__)

# Whole-value patterns (used with fullmatch only: "$" would let a trailing newline in).
TOKEN_ID = re.compile(r"[a-z0-9]{6,16}")
WORKER_ID = re.compile(WORKER_ID_PATTERN)
_NONCE = re.compile(r"[0-9a-fA-F]{32,128}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
# Retired servers are revoked: one being deleted is already gone.
REVOKED_STATUSES = RETIRED_STATUSES


@dataclass(frozen=True)
class AgentCaller:
    key_id: str
    nonce: str
    timestamp: int
    body: bytes

    async def persist_nonce(self, conn: aiosqlite.Connection) -> None:
        await nonces.persist(conn, self.key_id, self.nonce, self.timestamp)

    async def accept_live_worker(self, conn: aiosqlite.Connection) -> None:
        """Persists the nonce of a worker request, in a transaction that first checks,
        on the committed row, that the worker is not revoked (a missing row counts as
        deleted): a refused request writes nothing."""
        async with conn.execute("SELECT status FROM servers WHERE id = ?", (self.key_id,)) as cur:
            row = await cur.fetchone()
        check_not_revoked(self.key_id, str(row[0]) if row else "deleted")
        await self.persist_nonce(conn)


class Authenticator:
    def __init__(
        self,
        store: Store,
        keyring: Keyring,
        ledger: NonceLedger,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._keyring = keyring
        self._ledger = ledger
        self.clock = clock  # tests set it to step over the freshness boundary
        # Worker id -> decrypted secret; a worker's secret is set once, at registration.
        self._secrets: dict[str, str] = {}

    async def bootstrap(self, request: web.Request) -> AgentCaller:
        """A registration request, signed with a bootstrap token."""
        key_id, ts, nonce, presented = _headers(request)
        if not TOKEN_ID.fullmatch(key_id):
            raise _reject(key_id, "key id is not a bootstrap token id")
        return await self._verify(
            request, key_id, ts, nonce, presented, self._keyring.bootstrap_secret(key_id)
        )

    async def worker(self, request: web.Request) -> AgentCaller:
        """Any other agent request, signed with a worker's own secret. A worker's secret
        never changes, so it is cached; whether the worker is revoked is checked by the
        request's own transaction (heartbeats) or read (assignments)."""
        key_id, ts, nonce, presented = _headers(request)
        if not WORKER_ID.fullmatch(key_id):
            raise _reject(key_id, "key id is not a worker id", code="unknown_worker")
        secret = self._secrets.get(key_id)
        if secret is None:
            row = await self._store.fetch_one(
                "SELECT status, secret_ciphertext FROM servers WHERE id = ?", (key_id,)
            )
            if row is None or row["secret_ciphertext"] is None:
                raise _reject(key_id, "no registered worker has this id", code="unknown_worker")
            secret = self._decrypt(key_id, row["secret_ciphertext"])
            caller = await self._verify(request, key_id, ts, nonce, presented, secret)
            check_not_revoked(key_id, row["status"])
            self._secrets[key_id] = secret
            return caller
        return await self._verify(request, key_id, ts, nonce, presented, secret)

    def _decrypt(self, key_id: str, ciphertext: str) -> str:
        try:
            return self._keyring.decrypt(ciphertext)
        except SecretUnreadable:
            raise _reject(
                key_id, "stored worker secret is unreadable (INTERNAL_SECRET changed?)"
            ) from None

    async def _verify(
        self, request: web.Request, key_id: str, ts: str, nonce: str, presented: str, secret: str
    ) -> AgentCaller:
        timestamp = int(ts)
        if not signing.is_fresh(timestamp, self.clock()):
            raise _reject(
                key_id,
                f"timestamp {ts} is more than {signing.MAX_CLOCK_SKEW}s from our clock",
                code="stale_request",
            )
        if not request.raw_path.isascii():
            # RFC 3986 targets are ASCII; anything else cannot have been signed as sent.
            raise _reject(key_id, "request target is not ASCII", code="bad_signature")
        body = await request.read()
        path, _, query = request.raw_path.partition("?")
        canonical = signing.canonical_string(request.method, path, query, ts, nonce, key_id, body)
        if not signing.verify_signature(secret, canonical, presented):
            raise _reject(key_id, "signature does not match", code="bad_signature")
        if not self._ledger.claim(key_id, nonce.lower(), timestamp):
            raise _reject(key_id, "nonce already used (replayed request)", code="replayed_request")
        return AgentCaller(key_id=key_id, nonce=nonce.lower(), timestamp=timestamp, body=body)


def check_not_revoked(worker_id: str, status: str) -> None:
    if status in REVOKED_STATUSES:
        log.warning("revoked worker %s (status %s) is still calling", worker_id, status)
        raise Forbidden(f"worker {worker_id} is {status}", code="worker_revoked")


def _headers(request: web.Request) -> tuple[str, str, str, str]:
    values = []
    for name in signing.SIGNED_HEADERS:
        found = request.headers.getall(name, [])
        if not found or not found[0]:
            raise _reject("-", f"missing header {name}", code="missing_signature")
        if len(found) > 1:
            # Which copy counts would depend on the proxy in front: refuse them all.
            raise _reject("-", f"header {name} appears {len(found)} times")
        values.append(found[0])
    key_id, ts, nonce, presented = values
    if not _TIMESTAMP.fullmatch(ts):
        raise _reject(key_id, f"{signing.HEADER_TIMESTAMP} is not unix seconds")
    if not _NONCE.fullmatch(nonce):
        raise _reject(key_id, f"{signing.HEADER_NONCE} must be 16 to 64 random bytes in hex")
    if not signing.SIGNATURE.fullmatch(presented):
        raise _reject(key_id, f"{signing.HEADER_SIGNATURE} is not 64 lowercase hex digits")
    return key_id, ts, nonce, presented


def _reject(key_id: str, reason: str, *, code: str = "unauthorized") -> Unauthorized:
    # A confused client may put a whole token in the key header: log only real ids.
    shown = key_id if TOKEN_ID.fullmatch(key_id) or WORKER_ID.fullmatch(key_id) else "<not an id>"
    log.warning("rejected agent request (key %s): %s", shown, reason)
    return Unauthorized(reason, code=code)
