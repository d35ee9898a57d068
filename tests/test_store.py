"""The store: migrations, one writer, rollback, close(), and no leaks across cycles."""

from __future__ import annotations

import asyncio
import contextvars
import os
import sqlite3
import stat
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiosqlite
import pytest

from control.db.migrations import MIGRATIONS
from control.db.sqlite_write import SuspendedWrite
from control.db.store import COMPANIONS, Store, StoreUnavailable
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
    with pytest.raises(StoreUnavailable, match="newer than this build") as refused:
        await Store(path).open()
    assert refused.value.code == "schema_too_new"


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


async def test_a_read_function_sees_one_snapshot_in_one_thread_and_cannot_write(
    tmp_path: Path,
) -> None:
    store = Store(str(tmp_path / "db.sqlite"))
    await store.open()
    await store.write(
        lambda c: c.execute("INSERT INTO events (at, kind, message) VALUES (1, 'a', 'x')")
    )
    threads: set[str] = set()

    def count(conn: sqlite3.Connection) -> int:
        threads.add(threading.current_thread().name)
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def around_a_commit(conn: sqlite3.Connection) -> tuple[int, int]:
        before = count(conn)
        # Another connection commits between the function's two queries.
        with sqlite3.connect(store.path) as other:
            other.execute("INSERT INTO events (at, kind, message) VALUES (2, 'b', 'y')")
        return before, count(conn)

    assert await store.read(around_a_commit) == (1, 1)  # one snapshot
    assert await store.read(count) == 2  # the next read sees the commit
    assert len(threads) == 1 and threading.current_thread().name not in threads

    def writes(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM events")

    with pytest.raises(StoreUnavailable, match="readonly"):
        await store.read(writes)
    assert await store.read(count) == 2
    await store.close()
    await store.close()  # safe twice
    [name] = threads
    assert name not in {t.name for t in threading.enumerate()}  # its thread ended
    with pytest.raises(RuntimeError, match="not open"):
        await store.read(count)


async def test_writes_never_interleave(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "db.sqlite"))
    await store.open()

    async def bump(conn: aiosqlite.Connection) -> None:
        async with conn.execute("SELECT COUNT(*) FROM events") as cur:
            (n,) = await cur.fetchone()  # type: ignore[misc]
        await conn.execute("INSERT INTO events (at, kind, message) VALUES (?, 'n', ?)", (n, str(n)))

    await asyncio.gather(*(store.write(bump) for _ in range(50)))
    rows = await store.fetch_all("SELECT at FROM events ORDER BY id")
    assert [int(r["at"]) for r in rows] == list(range(50))
    await store.close()


REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="none")


async def test_a_write_runs_on_its_thread_in_its_caller_s_context(tmp_path: Path) -> None:
    """The whole transaction, commit hooks included, runs on the write connection's
    thread (one hop, not one per statement), still seeing the caller's context
    variables (the leader's term fencing checks, the request id of its log lines); what
    a hook returns to run after COMMIT runs on the loop."""
    store = Store(str(tmp_path / "db.sqlite"))
    await store.open()
    seen: list[tuple[str, str]] = []

    async def hook(conn: aiosqlite.Connection) -> Callable[[], None]:
        await conn.execute("SELECT 1")
        seen.append(("hook", threading.current_thread().name))
        return lambda: seen.append(("after", threading.current_thread().name))

    async def fn(conn: aiosqlite.Connection) -> str:
        await conn.execute("INSERT INTO events (at, kind, message) VALUES (1, 'n', 'x')")
        seen.append(("write", threading.current_thread().name))
        return REQUEST.get()

    store.add_commit_hook(hook)
    try:
        REQUEST.set("r-1")
        assert await store.write(fn) == "r-1"
    finally:
        await store.close()
    assert [where for where, _ in seen] == ["write", "hook", "after"]
    assert seen[0][1].startswith("store-write") and seen[1][1] == seen[0][1]
    assert seen[2][1] == threading.current_thread().name != seen[0][1]


async def test_a_write_that_awaits_anything_but_its_connection_is_refused_whole(
    tmp_path: Path,
) -> None:
    """A write runs whole on the database's thread (control/db/sqlite_write.py), where
    nothing else may be awaited: one that tries is rolled back with a clear error, and
    the next write runs as usual."""
    store = Store(str(tmp_path / "db.sqlite"))
    await store.open()

    async def waits(conn: aiosqlite.Connection) -> None:
        await conn.execute("INSERT INTO events (at, kind, message) VALUES (1, 'n', 'kept?')")
        await asyncio.sleep(0)

    try:
        with pytest.raises(SuspendedWrite, match="may only await the connection"):
            await store.write(waits)
        assert await store.fetch_all("SELECT * FROM events") == []
        await store.write(
            lambda c: c.execute("INSERT INTO events (at, kind, message) VALUES (2, 'n', 'x')")
        )
        assert [r["at"] for r in await store.fetch_all("SELECT at FROM events")] == [2]
    finally:
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
    known_threads = set(threading.enumerate())
    tasks_before = len(asyncio.all_tasks())
    for _ in range(25):
        await control.start()
        status, _ = await control.admin("GET", "/v1/servers")
        assert status == 200
        await control.stop()
    # A closed aiosqlite connection's thread ends on its own, unjoined: join (not sleep)
    # so the count is taken once every thread that is ending has ended.
    for thread in set(threading.enumerate()) - known_threads:
        thread.join(10)  # none needs the loop to end
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 2  # the client session's socket
    assert threading.active_count() <= threads_before
    assert len(asyncio.all_tasks()) <= tasks_before
    with sqlite3.connect(control.settings.database_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which SQLite's own files come out 0644."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_directory_and_every_file_are_private_from_the_first_write(
    tmp_path: Path, umask_022: None
) -> None:
    path = tmp_path / "data" / "clawfleet.db"
    store = Store(str(path))
    await store.open()
    try:
        await store.write(
            lambda c: c.execute("INSERT INTO events (at, kind, message) VALUES (1, 'a', 'b')")
        )
        files = {p.name: mode(p) for p in path.parent.iterdir()}
        assert {"clawfleet.db-wal", "clawfleet.db-shm"} <= files.keys()  # written, still open
        assert files == dict.fromkeys(files, 0o600)
        assert mode(path.parent) == 0o700
    finally:
        await store.close()


async def test_loose_files_of_an_earlier_run_are_tightened_before_use(
    tmp_path: Path, umask_022: None
) -> None:
    path = tmp_path / "clawfleet.db"
    # What a crash of an earlier version leaves: database, -wal and -shm, all 0644.
    earlier = sqlite3.connect(path)
    earlier.execute("PRAGMA journal_mode=WAL")
    earlier.execute("CREATE TABLE t (x)")
    loose = [path, *(Path(f"{path}{suffix}") for suffix in COMPANIONS)]
    assert [mode(p) for p in loose] == [0o644] * 3
    store = Store(str(path))
    await store.open()
    try:
        assert [mode(p) for p in loose] == [0o600] * 3
    finally:
        await store.close()
        earlier.close()


def assert_connection_threads_end() -> None:
    """No aiosqlite connection thread (non-daemon: it keeps a process alive) is left."""
    for thread in threading.enumerate():
        if "_connection_worker_thread" in thread.name:
            thread.join(timeout=5)
            assert not thread.is_alive(), f"{thread.name} outlived its store"


async def test_a_garbage_file_is_refused_and_leaves_no_thread_nor_lock(tmp_path: Path) -> None:
    path = tmp_path / "clawfleet.db"
    path.write_bytes(b"this is not a database " * 20)
    for _ in range(2):  # the second attempt proves the first released its lock
        with pytest.raises(StoreUnavailable, match="file is not a database") as refused:
            await Store(str(path)).open()
        assert refused.value.code == "store_unavailable"
        assert_connection_threads_end()


async def test_a_second_store_on_one_database_is_refused_until_the_first_closes(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "clawfleet.db")
    first = Store(path)
    await first.open()
    with pytest.raises(StoreUnavailable, match=f"pid {os.getpid()}") as refused:
        await Store(path).open()
    assert refused.value.code == "store_locked"
    await first.close()
    assert_connection_threads_end()
    second = Store(path)
    await second.open()
    await second.close()


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes a 0400 file (tests/test_startup.py runs this as nobody)"
)
async def test_a_read_only_database_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "clawfleet.db"
    store = Store(str(path))
    await store.open()
    await store.close()
    path.chmod(0o400)
    with pytest.raises(StoreUnavailable, match="readonly"):
        await Store(str(path)).open()
    assert mode(path) == 0o400  # an operator's read-only stays read-only


async def insert_event(conn: aiosqlite.Connection) -> None:
    await conn.execute(
        "INSERT INTO events (at, kind, message) VALUES (1, 'big', ?)", ("x" * 200_000,)
    )


async def duplicate_key(conn: aiosqlite.Connection) -> None:
    await conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (1, 0)")


async def bad_sql(conn: aiosqlite.Connection) -> None:
    await conn.execute("INSERT INTO no_such_table VALUES (1)")


@pytest.mark.parametrize(
    ("setup", "fn", "unavailable", "probe_fails"),
    [
        # A real full disk: SQLite may use no more pages than the database has. The
        # probe rewrites a page it already has, so it still passes.
        ("PRAGMA max_page_count = 1", insert_event, "database or disk is full", False),
        # A real read-only database, as SQLite reports it for a read-only file.
        ("PRAGMA query_only = 1", insert_event, "attempt to write a readonly database", True),
        # Not the store's failures: they stay what they are.
        (None, duplicate_key, None, False),
        (None, bad_sql, None, False),
    ],
)
async def test_write_failures_of_the_database_itself_are_store_unavailable(
    tmp_path: Path,
    setup: str | None,
    fn: Callable[[aiosqlite.Connection], Awaitable[None]],
    unavailable: str | None,
    probe_fails: bool,
) -> None:
    store = Store(str(tmp_path / "clawfleet.db"))
    await store.open()
    try:
        if setup:
            await store.write(lambda c: c.execute(setup))
        if unavailable is None:
            with pytest.raises(sqlite3.Error):
                await store.write(fn)
            assert store.failure is None
            return
        with pytest.raises(StoreUnavailable, match=unavailable) as refused:
            await store.write(fn)
        assert (refused.value.status, refused.value.code) == (503, "store_unavailable")
        assert store.failure is not None and unavailable in store.failure
        if probe_fails:
            with pytest.raises(StoreUnavailable):
                await store.probe()
        else:
            await store.probe()
    finally:
        await store.close()


async def test_writes_recover_and_the_outage_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(str(tmp_path / "clawfleet.db"))
    await store.open()
    try:
        await store.write(lambda c: c.execute("PRAGMA max_page_count = 1"))  # disk full
        for _ in range(3):
            with pytest.raises(StoreUnavailable):
                await store.write(insert_event)
        assert store.failure is not None
        await store.write(lambda c: c.execute("PRAGMA max_page_count = 100000"))  # space again
        assert store.failure is None
        await store.write(insert_event)
        lines = [r.getMessage() for r in caplog.records if r.name == "control.db.store"]
        assert sum("writes are failing" in line for line in lines) == 1
        assert sum("writes succeed again" in line for line in lines) == 1
    finally:
        await store.close()
