"""The `leases` table's one writer: a lease is taken, renewed and released here, each
in the caller's write transaction, so that reading the row, deciding and writing it
are one step that no other writer interleaves with (both stores serialise writes:
SQLite's BEGIN IMMEDIATE, PostgreSQL's advisory write lock).

Contract:
- `take(conn, name, me, now, ttl)` reads the row, applies `decide` (decide.py) and
  writes what it decided: a new term (holder, epoch, acquired_at, expires_at) on
  `acquire`, with a `leader_elected` event in the same transaction; a later
  `expires_at` on `renew`; nothing on `wait`. Returns the decision.
- `holds(conn, name, holder, epoch, now)`: whether the row still names this holder
  and epoch and has not expired at `now` (the fence, fencing.py).
- `release(conn, name, holder, epoch, now)` ends a live term of this holder at `now`,
  so that another replica takes over at its next look instead of at the expiry.
- `read(store, name)`: the row, for status pages (outside any write).
Portable SQL: epoch seconds come from Python, the upsert is ON CONFLICT.
"""

from __future__ import annotations

from typing import Any, Protocol

import aiosqlite

from control.db import events
from control.db.store import fetch_one
from control.leadership.decide import Decision, Lease, decide

_SELECT = "SELECT holder, epoch, expires_at FROM leases WHERE name = ?"


class Reader(Protocol):
    async def fetch_one(self, sql: str, params: Any = ()) -> Any: ...


def _lease(row: Any) -> Lease | None:
    if row is None:
        return None
    return Lease(str(row["holder"]), int(row["epoch"]), float(row["expires_at"]))


async def read(store: Reader, name: str) -> Lease | None:
    return _lease(await store.fetch_one(_SELECT, (name,)))


async def take(
    conn: aiosqlite.Connection, *, name: str, me: str, now: float, ttl: float
) -> Decision:
    before = _lease(await fetch_one(conn, _SELECT, (name,)))
    decision = decide(before, me, now, ttl)
    after = decision.lease
    if decision.action == "acquire":
        await conn.execute(
            "INSERT INTO leases (name, holder, epoch, acquired_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
            "epoch = excluded.epoch, acquired_at = excluded.acquired_at, "
            "expires_at = excluded.expires_at",
            (name, after.holder, after.epoch, now, after.expires_at),
        )
        previous = f"after {before.holder}'s lapsed lease" if before else "first holder"
        message = f"{name}: {me} leads (epoch {after.epoch}, {previous})"
        await events.record(conn, "leader_elected", message, at=now)
    elif decision.action == "renew":
        await conn.execute(
            "UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ? AND epoch = ?",
            (after.expires_at, name, me, after.epoch),
        )
    return decision


async def holds(
    conn: aiosqlite.Connection, *, name: str, holder: str, epoch: int, now: float
) -> bool:
    row = _lease(await fetch_one(conn, _SELECT, (name,)))
    return row is not None and row.holder == holder and row.epoch == epoch and row.expires_at > now


async def release(
    conn: aiosqlite.Connection, *, name: str, holder: str, epoch: int, now: float
) -> None:
    await conn.execute(
        "UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ? AND epoch = ? "
        "AND expires_at > ?",
        (now, name, holder, epoch, now),
    )
