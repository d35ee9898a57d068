"""The event log operators read through `GET /v1/events`: every decision the control
plane takes about a server or a user, written in the same transaction as the change."""

from __future__ import annotations

import time

import aiosqlite


async def record(
    conn: aiosqlite.Connection,
    kind: str,
    message: str,
    *,
    server_id: str | None = None,
    user_id: str | None = None,
    at: float | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO events (at, kind, server_id, user_id, message) VALUES (?, ?, ?, ?, ?)",
        (time.time() if at is None else at, kind, server_id, user_id, message),
    )
