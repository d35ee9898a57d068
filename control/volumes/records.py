"""The `volumes` table: one row per user's block volume. The only writer of the table.

Contract: each function runs in the caller's transaction. A step is recorded BEFORE its
provider call (`creating`, `attaching`, `detaching`, `deleting`), so a crash or a lost
reply leaves a row that says which call to repeat; every provider call used is
idempotent (control/capacity/providers/base.py). `server_id` is the server the volume is
attached to (or being attached to or detached from); `last_error`, `failures` and
`not_before` are the retry state after a failed call. `replace` swaps in the volume a
move to another location restored the user's state onto (control/volumes/relocate.py).
"""

from __future__ import annotations

import aiosqlite

from control.db.store import Row, fetch_all, fetch_one


async def get(conn: aiosqlite.Connection, user_id: str) -> Row | None:
    return await fetch_one(conn, "SELECT * FROM volumes WHERE user_id = ?", (user_id,))


async def all_rows(conn: aiosqlite.Connection) -> list[Row]:
    return await fetch_all(conn, "SELECT * FROM volumes ORDER BY user_id")


async def begin_create(
    conn: aiosqlite.Connection,
    user_id: str,
    name: str,
    provider: str,
    location: str,
    size_gb: int,
    now: float,
) -> None:
    await conn.execute(
        "INSERT INTO volumes (user_id, name, provider, location, size_gb, state, created_at, "
        "updated_at) VALUES (?, ?, ?, ?, ?, 'creating', ?, ?) ON CONFLICT(user_id) DO NOTHING",
        (user_id, name, provider, location, size_gb, now, now),
    )


async def created(
    conn: aiosqlite.Connection, user_id: str, provider_id: str, device: str, now: float
) -> None:
    await conn.execute(
        "UPDATE volumes SET provider_id = ?, device = ?, state = 'detached', last_error = NULL, "
        "failures = 0, not_before = NULL, updated_at = ? WHERE user_id = ?",
        (provider_id, device, now, user_id),
    )


async def set_state(
    conn: aiosqlite.Connection, user_id: str, state: str, server_id: str | None, now: float
) -> None:
    """A step begins or ends; success clears the retry state."""
    done = state in ("attached", "detached")
    await conn.execute(
        "UPDATE volumes SET state = ?, server_id = ?, updated_at = ?, "
        "last_error = CASE WHEN ? THEN NULL ELSE last_error END, "
        "failures = CASE WHEN ? THEN 0 ELSE failures END, "
        "not_before = CASE WHEN ? THEN NULL ELSE not_before END WHERE user_id = ?",
        (state, server_id, now, done, done, done, user_id),
    )


async def resized(conn: aiosqlite.Connection, user_id: str, size_gb: int, now: float) -> None:
    """The provider grew the volume: the size its spec now carries."""
    await conn.execute(
        "UPDATE volumes SET size_gb = ?, last_error = NULL, failures = 0, not_before = NULL, "
        "updated_at = ? WHERE user_id = ?",
        (size_gb, now, user_id),
    )


async def failed(
    conn: aiosqlite.Connection, user_id: str, message: str, not_before: float, now: float
) -> None:
    await conn.execute(
        "UPDATE volumes SET last_error = ?, failures = failures + 1, not_before = ?, "
        "updated_at = ? WHERE user_id = ?",
        (message, not_before, now, user_id),
    )


async def waiting(
    conn: aiosqlite.Connection, user_id: str, message: str | None, now: float
) -> None:
    """Not a failure: the volume waits for something else (a container to stop, the
    agent's mount); None: the wait is over."""
    await conn.execute(
        "UPDATE volumes SET last_error = ?, updated_at = ? WHERE user_id = ?",
        (message, now, user_id),
    )


async def replace(
    conn: aiosqlite.Connection,
    user_id: str,
    volume: tuple[str, str, str, str | None],
    server_id: str,
    now: float,
) -> None:
    """A move to another location is over (control/volumes/relocation.py): the user's
    volume is now `volume` (provider id, name, location, device), attached to `server_id`."""
    provider_id, name, location, device = volume
    await conn.execute(
        "UPDATE volumes SET provider_id = ?, name = ?, location = ?, device = ?, server_id = ?, "
        "state = 'attached', last_error = NULL, failures = 0, not_before = NULL, updated_at = ? "
        "WHERE user_id = ?",
        (provider_id, name, location, device, server_id, now, user_id),
    )


async def forget(conn: aiosqlite.Connection, user_id: str) -> None:
    """The volume is deleted at the provider."""
    await conn.execute("DELETE FROM volumes WHERE user_id = ?", (user_id,))
