"""The checkouts table's reads for the rest of the portal (control/portal/checkouts.py):
open demand per plan, paid users per e-mail, and settling."""

from __future__ import annotations

from pathlib import Path

import aiosqlite

from control.db.store import Store
from control.portal import checkouts
from control.users import records

NOW = 1_000_000.0


def row(n: int, plan: str = "pro", email: str = "a@example.com", hold: float = 600) -> dict:  # type: ignore[type-arg]
    return {
        "id": f"co-{n}",
        "token_hash": checkouts.token_hash(f"t{n}"),
        "user_id": f"u{n}",
        "subdomain": f"name{n}",
        "plan": plan,
        "email": email,
        "expires_at": NOW + hold,
    }


async def test_open_demand_and_paid_users(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "db.sqlite"))
    await store.open()
    try:

        async def fill(conn: aiosqlite.Connection) -> None:
            await checkouts.reserve(conn, row(1), NOW - 100)
            await checkouts.reserve(conn, row(2), NOW)
            await checkouts.reserve(conn, row(3, plan="default", email="B@example.com"), NOW)
            await checkouts.reserve(conn, row(4, hold=-10), NOW - 3000)  # expired
            await records.insert(conn, "u2", "name2", "pro", "x", now=NOW, created_by="stripe")

        await store.write(fill)
        # u2 is a user now (paid): counted by the autoscaler as a user, not here.
        assert await checkouts.open_checkouts(store, NOW - 1000, NOW) == [
            ("default", 1),
            ("pro", 1),
        ]
        assert await checkouts.open_checkouts(store, NOW - 50, NOW) == [("default", 1)]
        assert await checkouts.users_with_email(store, "A@EXAMPLE.COM") == ["u2"]
        assert await checkouts.users_with_email(store, "b@example.com") == []
        await store.write(lambda conn: checkouts.settle(conn, NOW))
        states = await store.fetch_all("SELECT id, state FROM checkouts ORDER BY id")
        assert [(r["id"], r["state"]) for r in states] == [
            ("co-1", "open"),
            ("co-2", "paid"),
            ("co-3", "open"),
            ("co-4", "expired"),
        ]
    finally:
        await store.close()
