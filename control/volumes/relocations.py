"""The `relocations` table: one row per user moving to another location through a backup
and a restore (control/volumes/relocation.py). The only writer of the table.

Contract: each function runs in the caller's transaction. A row is created with the
old volume's identity and the new volume's name (the idempotency key of its create)
before anything acts, and each phase is recorded before the call it stands for, with
the job it created in the same statement; `failed` and `waiting` are the retry state
and what the user is told. The row is deleted only once the move is over (the old
volume deleted, or the move called off and the new one deleted). A recovery's row has
no source server (`begin_recovery`).
"""

from __future__ import annotations

import aiosqlite

from control.db.store import Row, fetch_all, fetch_one


async def get(conn: aiosqlite.Connection, user_id: str) -> Row | None:
    return await fetch_one(conn, "SELECT * FROM relocations WHERE user_id = ?", (user_id,))


async def all_rows(conn: aiosqlite.Connection) -> list[Row]:
    return await fetch_all(conn, "SELECT * FROM relocations ORDER BY user_id")


async def begin(
    conn: aiosqlite.Connection,
    volume: Row,
    source: str,
    target: str,
    location: str,
    new_name: str,
    now: float,
) -> None:
    await _insert(conn, volume, "stopping", source, target, location, None, new_name, now)


async def begin_recovery(
    conn: aiosqlite.Connection,
    volume: Row,
    target: str,
    new_name: str,
    snapshot_id: str,
    now: float,
) -> None:
    """A recovery (control/volumes/recover.py): no source, the snapshot chosen, and its
    first phase `creating` (the lost volume cannot be snapshotted), in its location."""
    location = volume["location"]
    await _insert(conn, volume, "creating", None, target, location, snapshot_id, new_name, now)


async def _insert(
    conn: aiosqlite.Connection,
    volume: Row,
    phase: str,
    source: str | None,
    target: str,
    location: str,
    snapshot_id: str | None,
    new_name: str,
    now: float,
) -> None:
    await conn.execute(
        "INSERT INTO relocations (user_id, phase, source_server, target_server, "
        "target_location, snapshot_id, old_provider_id, old_name, old_location, old_device, "
        "size_gb, new_name, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            volume["user_id"],
            phase,
            source,
            target,
            location,
            snapshot_id,
            volume["provider_id"],
            volume["name"],
            volume["location"],
            volume["device"],
            volume["size_gb"],
            new_name,
            now,
            now,
        ),
    )


async def advance(
    conn: aiosqlite.Connection,
    user_id: str,
    phase: str,
    now: float,
    *,
    snapshot_job: str | None = None,
    snapshot_id: str | None = None,
    restore_job: str | None = None,
    new_provider_id: str | None = None,
    new_device: str | None = None,
) -> None:
    """A new phase (and what it carries: a None keeps the stored value); the wait and
    the retry state are cleared."""
    await conn.execute(
        "UPDATE relocations SET phase = ?, snapshot_job = COALESCE(?, snapshot_job), "
        "snapshot_id = COALESCE(?, snapshot_id), restore_job = COALESCE(?, restore_job), "
        "new_provider_id = COALESCE(?, new_provider_id), new_device = COALESCE(?, new_device), "
        "last_error = NULL, failures = 0, not_before = NULL, updated_at = ? WHERE user_id = ?",
        (
            phase,
            snapshot_job,
            snapshot_id,
            restore_job,
            new_provider_id,
            new_device,
            now,
            user_id,
        ),
    )


async def failed(
    conn: aiosqlite.Connection, user_id: str, message: str, not_before: float, now: float
) -> None:
    await conn.execute(
        "UPDATE relocations SET last_error = ?, failures = failures + 1, not_before = ?, "
        "updated_at = ? WHERE user_id = ?",
        (message, not_before, now, user_id),
    )


async def waiting(conn: aiosqlite.Connection, user_id: str, message: str, now: float) -> None:
    await conn.execute(
        "UPDATE relocations SET last_error = ?, updated_at = ? WHERE user_id = ?",
        (message, now, user_id),
    )


async def forget(conn: aiosqlite.Connection, user_id: str) -> None:
    await conn.execute("DELETE FROM relocations WHERE user_id = ?", (user_id,))
