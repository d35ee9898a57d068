"""Replay protection: each (key id, nonce) pair is accepted once.

`claim` checks and reserves a pair in memory synchronously, so two copies of one
request racing in the same process cannot both pass; `persist` writes the pair in
the caller's transaction (`persist_many` for a batch of heartbeats), and `load` reads back the pairs still inside the clock
window at start-up, so the guarantee holds across restarts. A pair only needs
remembering until its timestamp is too old to be accepted anyway. This module is
the only writer of the `nonces` table.
"""

from __future__ import annotations

from collections.abc import Iterable

import aiosqlite

from control.db.store import Store
from shared.signing import MAX_CLOCK_SKEW


class NonceLedger:
    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], float] = {}

    async def load(self, store: Store, now: float) -> None:
        rows = await store.fetch_all(
            "SELECT key_id, nonce, expires_at FROM nonces WHERE expires_at > ?", (now,)
        )
        self._seen = {(r["key_id"], r["nonce"]): r["expires_at"] for r in rows}

    def claim(self, key_id: str, nonce: str, timestamp: int) -> bool:
        pair = (key_id, nonce)
        if pair in self._seen:
            return False
        self._seen[pair] = expiry(timestamp)
        return True

    def prune(self, now: float) -> None:
        self._seen = {pair: exp for pair, exp in self._seen.items() if exp > now}

    def __len__(self) -> int:
        return len(self._seen)


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
