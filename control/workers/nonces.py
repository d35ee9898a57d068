"""Replay protection: each (key id, nonce) pair is accepted once, by every replica.

`claim` checks and reserves a pair in memory synchronously, so two copies of one
request racing in the same process cannot both pass (and a replay to this process is
refused before any work). The database is the judge across processes: `persist`
writes the pair in the caller's transaction and raises `replayed` (401
`replayed_request`, as `claim`'s refusal) when the table already holds it, which is
what a copy accepted by another replica sharing the database (or before a restart)
leaves; `persist_many`, for a batch of heartbeats, refuses nothing itself but says
which pairs were already there, so one replay fails its own request and not the
batch. `load` reads back the pairs still inside the clock window at start-up, so the
in-memory check holds across restarts too. A pair only needs remembering until its
timestamp is too old to be accepted anyway. This module is the only writer of the
`nonces` table.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import aiosqlite

from control.db.store import Store, fetch_all
from control.errors import Unauthorized
from shared.signing import MAX_CLOCK_SKEW

log = logging.getLogger(__name__)

REPLAYED = "nonce already used (replayed request)"
# Rows per INSERT: 3 parameters each stays under SQLite's oldest limit of 999.
_CHUNK = 300


class NonceLedger:
    """The pairs still inside the clock window, in memory. Built to be cheap for the
    garbage collector at 10k workers (docs/benchmarks.md): a pair is one string (an
    untracked object), and pruning drops whole one-second buckets instead of rebuilding
    the table, so the set of ~100k pairs grows old once and young collections never walk
    it again."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._expiring: dict[int, list[str]] = {}  # expiry second -> pairs expiring then

    async def load(self, store: Store, now: float) -> None:
        rows = await store.fetch_all(
            "SELECT key_id, nonce, expires_at FROM nonces WHERE expires_at > ?", (now,)
        )
        self._seen, self._expiring = set(), {}
        for r in rows:
            self._remember(_pair(r["key_id"], r["nonce"]), r["expires_at"])

    def claim(self, key_id: str, nonce: str, timestamp: int) -> bool:
        pair = _pair(key_id, nonce)
        if pair in self._seen:
            return False
        self._remember(pair, expiry(timestamp))
        return True

    def prune(self, now: float) -> None:
        for second in [s for s in self._expiring if s <= now]:
            self._seen.difference_update(self._expiring.pop(second))

    def _remember(self, pair: str, expires_at: float) -> None:
        self._seen.add(pair)
        self._expiring.setdefault(math.ceil(expires_at), []).append(pair)

    def __len__(self) -> int:
        return len(self._seen)


def _pair(key_id: str, nonce: str) -> str:
    # Key ids and nonces hold no space: control/workers/auth.py full-matches both first.
    return f"{key_id} {nonce}"


def expiry(timestamp: int) -> float:
    return float(timestamp + MAX_CLOCK_SKEW + 1)


def replayed(key_id: str) -> Unauthorized:
    """The refusal of a replayed request (what control/workers/auth.py answers too)."""
    log.warning("rejected agent request (key %s): %s", key_id, REPLAYED)
    return Unauthorized(REPLAYED, code="replayed_request")


async def persist(conn: aiosqlite.Connection, key_id: str, nonce: str, timestamp: int) -> None:
    """Records the pair; raises `replayed` (the caller's transaction rolls back) when
    the database already holds it."""
    if not (await persist_many(conn, [(key_id, nonce, timestamp)]))[0]:
        raise replayed(key_id)


async def persist_many(
    conn: aiosqlite.Connection, pairs: Iterable[tuple[str, str, int]]
) -> list[bool]:
    """Records (key id, nonce, timestamp) of each request; for each, in order, whether
    it is new (False: the pair was already stored, or earlier in `pairs`: a replay)."""
    pairs = list(pairs)
    if await _all_new(conn, pairs):
        return [True] * len(pairs)
    stored: set[tuple[str, str]] = set()
    for start in range(0, len(pairs), _CHUNK):
        chunk = pairs[start : start + _CHUNK]
        values = ", ".join("(?, ?, ?)" for _ in chunk)
        # RETURNING gives only the rows inserted: a conflict is a pair seen before.
        rows = await fetch_all(
            conn,
            f"INSERT INTO nonces (key_id, nonce, expires_at) VALUES {values} "
            "ON CONFLICT (key_id, nonce) DO NOTHING RETURNING key_id, nonce",
            [v for key_id, nonce, ts in chunk for v in (key_id, nonce, expiry(ts))],
        )
        stored.update((str(r[0]), str(r[1])) for r in rows)
    fresh = []
    for key_id, nonce, _ in pairs:
        fresh.append((key_id, nonce) in stored)
        stored.discard((key_id, nonce))  # a second copy in one batch is a replay too
    return fresh


async def _all_new(conn: aiosqlite.Connection, pairs: list[tuple[str, str, int]]) -> bool:
    """Stores the batch and says True when every pair went in: the usual case, done
    with one prepared statement (issue 16: a multi-row `INSERT ... RETURNING` of a new
    text per batch size took twice as long, inside the write lock every request waits
    for). Else nothing is kept, and the caller finds the replays row by row."""
    if len({(key_id, nonce) for key_id, nonce, _ in pairs}) < len(pairs):
        return False
    await conn.execute("SAVEPOINT nonces")
    cursor = await conn.executemany(
        "INSERT INTO nonces (key_id, nonce, expires_at) VALUES (?, ?, ?) "
        "ON CONFLICT (key_id, nonce) DO NOTHING",
        [(key_id, nonce, expiry(ts)) for key_id, nonce, ts in pairs],
    )
    inserted = cursor.rowcount == len(pairs)  # summed over the rows; a conflict adds 0
    if not inserted:
        await conn.execute("ROLLBACK TO SAVEPOINT nonces")
    # No RELEASE: COMMIT ends the savepoint too, and one statement less is one round
    # trip less under the write lock on PostgreSQL.
    return inserted


async def purge_expired(conn: aiosqlite.Connection, now: float) -> None:
    await conn.execute("DELETE FROM nonces WHERE expires_at <= ?", (now,))
