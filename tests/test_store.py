"""The store: migrations, one writer, rollback, close(), and no leaks across cycles."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import aiosqlite
import pytest

from control.migrations import MIGRATIONS
from control.store import Store
from tests.fixtures import ControlPlane


async def test_migrations_are_recorded_and_idempotent(tmp_path: Path) -> None:
    path = str(tmp_path / "db.sqlite")
    for _ in range(2):
        store = Store(path)
        await store.open()
        rows = await store.fetch_all("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == list(range(1, len(MIGRATIONS) + 1))
        await store.close()


async def test_newer_schema_refuses_to_start(tmp_path: Path) -> None:
    path = str(tmp_path / "db.sqlite")
    store = Store(path)
    await store.open()
    await store.write(lambda c: c.execute("INSERT INTO schema_migrations VALUES (999, 0)"))
    await store.close()
    with pytest.raises(RuntimeError, match="newer than this build"):
        await Store(path).open()


async def test_failed_write_rolls_back_everything(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "db.sqlite"))
    await store.open()

    async def half(conn: aiosqlite.Connection) -> None:
        await conn.execute("INSERT INTO events (at, kind, message) VALUES (1, 'a', 'first')")
        raise ValueError("boom")

    with pytest.raises(ValueError):
        await store.write(half)
    assert await store.fetch_all("SELECT * FROM events") == []
    await store.close()
    await store.close()  # safe twice


async def test_writes_never_interleave(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "db.sqlite"))
    await store.open()

    async def bump(conn: aiosqlite.Connection) -> None:
        async with conn.execute("SELECT COUNT(*) FROM events") as cur:
            (n,) = await cur.fetchone()  # type: ignore[misc]
        await asyncio.sleep(0)  # give another writer every chance to interleave
        await conn.execute("INSERT INTO events (at, kind, message) VALUES (?, 'n', ?)", (n, str(n)))

    await asyncio.gather(*(store.write(bump) for _ in range(50)))
    rows = await store.fetch_all("SELECT at FROM events ORDER BY id")
    assert [int(r["at"]) for r in rows] == list(range(50))
    await store.close()


async def test_database_file_is_private(control: ControlPlane) -> None:
    assert os.stat(control.settings.database_path).st_mode & 0o777 == 0o600


async def test_no_leaks_across_many_start_stop_cycles(
    control_factory: Callable[..., ControlPlane],
) -> None:
    control = control_factory()
    await control.start()
    await control.stop()
    fds_before = len(os.listdir("/proc/self/fd"))
    threads_before = threading.active_count()
    tasks_before = len(asyncio.all_tasks())
    for _ in range(25):
        await control.start()
        status, _ = await control.admin("GET", "/v1/servers")
        assert status == 200
        await control.stop()
    await asyncio.sleep(0.1)
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 2  # the client session's socket
    assert threading.active_count() <= threads_before
    assert len(asyncio.all_tasks()) <= tasks_before
    with sqlite3.connect(control.settings.database_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
