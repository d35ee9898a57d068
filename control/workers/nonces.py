"""Replay protection: each (key id, nonce) pair is accepted once.

`claim` checks and reserves a pair in memory synchronously, so two copies of one
request racing in the same process cannot both pass; `persist` writes the pair in
the caller's transaction (`persist_many` for a batch of heartbeats), and `load` reads back the pairs still inside the clock
window at start-up, so the guarantee holds across restarts. A pair only needs
remembering until its timestamp is too old to be accepted anyway. This module is
the only writer of the `nonces` table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import aiosqlite

from control.db.store import Store
from shared.signing import MAX_CLOCK_SKEW


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


async def persist(conn: aiosqlite.Connection, key_id: str, nonce: str, timestamp: int) -> None:
    await persist_many(conn, [(key_id, nonce, timestamp)])


async def persist_many(conn: aiosqlite.Connection, pairs: Iterable[tuple[str, str, int]]) -> None:
    """(key id, nonce, timestamp) of each accepted request, in one statement."""
    await conn.executemany(
        "INSERT INTO nonces (key_id, nonce, expires_at) VALUES (?, ?, ?) "
        "ON CONFLICT (key_id, nonce) DO NOTHING",
        [(key_id, nonce, expiry(timestamp)) for key_id, nonce, timestamp in pairs],
    )


async def purge_expired(conn: aiosqlite.Connection, now: float) -> None:
    await conn.execute("DELETE FROM nonces WHERE expires_at <= ?", (now,))
