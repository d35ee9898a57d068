"""The session store on a real SQLite file: ids, derived CSRF tokens, idle and absolute
expiry, pruning, the cap, and what the database holds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from control.api.sessions import SessionStore, check_admin_token, check_csrf
from control.db.store import Store
from tests.fixtures import INTERNAL_SECRET


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(str(tmp_path / "sessions.db"))
    await store.open()
    yield store
    await store.close()


def sessions(db: Store, clock: Clock | None = None, **kwargs: Any) -> SessionStore:
    return SessionStore(lambda: db, INTERNAL_SECRET, clock=clock or Clock(), **kwargs)


async def test_sessions_are_random_and_carry_their_own_csrf_token(db: Store) -> None:
    store = sessions(db)
    ids = set()
    for _ in range(20):
        session_id, session = await store.create()
        assert len(session_id) >= 43 and session.csrf_token != session_id
        found = await store.get(session_id)
        assert found is not None and found.csrf_token == session.csrf_token
        ids.add(session_id)
    assert len(ids) == 20 and await store.count() == 20
    for absent in ("unknown", None, "", "\udcff"):
        assert await store.get(absent) is None


async def test_the_csrf_token_survives_a_new_store_but_not_a_new_secret(db: Store) -> None:
    session_id, session = await sessions(db).create()
    again = await sessions(db).get(session_id)
    assert again is not None and again.csrf_token == session.csrf_token
    other = SessionStore(lambda: db, "another-internal-secret-" + "c" * 20, clock=Clock())
    moved = await other.get(session_id)
    assert moved is not None and moved.csrf_token != session.csrf_token


async def test_idle_sessions_expire_and_use_keeps_them_alive(db: Store) -> None:
    clock = Clock()
    store = sessions(db, clock, idle_timeout=100, max_age=1000, touch_every=30)
    active, _ = await store.create()
    idle, _ = await store.create()
    for _ in range(3):
        clock.now += 60
        assert await store.get(active) is not None
    assert await store.get(idle) is None  # 180 s without use
    assert await store.count() == 1  # and its row is gone


async def test_sessions_end_at_max_age_even_when_used(db: Store) -> None:
    clock = Clock()
    store = sessions(db, clock, idle_timeout=100, max_age=250, touch_every=30)
    session_id, _ = await store.create()
    for _ in range(4):
        clock.now += 60
        assert await store.get(session_id) is not None
    clock.now += 60  # 300 s old
    assert await store.get(session_id) is None


async def test_expired_sessions_are_pruned_without_being_asked_for(db: Store) -> None:
    clock = Clock()
    store = sessions(db, clock, idle_timeout=100, max_age=1000, touch_every=30)
    for _ in range(5):
        await store.create()
    clock.now += 150
    await store.create()  # a sign-in prunes
    assert await store.count() == 1
    clock.now += 60
    used, _ = await store.create()
    clock.now += 60  # the first one is now idle too long, nobody asks for it
    assert await store.get(used) is not None  # a refresh prunes too
    assert await store.count() == 1


async def test_the_least_recently_used_session_goes_first_at_the_cap(db: Store) -> None:
    clock = Clock()
    store = sessions(db, clock, max_sessions=2, touch_every=10)
    first, _ = await store.create()
    clock.now += 20
    second, _ = await store.create()
    clock.now += 20
    assert await store.get(first) is not None  # first is now the most recently used
    third, _ = await store.create()
    assert await store.get(second) is None
    assert await store.get(first) is not None and await store.get(third) is not None
    assert await store.count() == 2


async def test_use_is_written_at_most_every_touch_interval(db: Store) -> None:
    clock = Clock()
    store = sessions(db, clock, touch_every=60)
    session_id, _ = await store.create()
    clock.now += 59
    seen = await store.get(session_id)
    assert seen is not None and seen.last_seen == clock.now - 59
    clock.now += 1
    seen = await store.get(session_id)
    assert seen is not None and seen.last_seen == clock.now


async def test_the_database_holds_only_hashes(db: Store, tmp_path: Path) -> None:
    store = sessions(db)
    session_id, session = await store.create()
    rows = await db.fetch_all("SELECT * FROM dashboard_sessions")
    assert len(rows) == 1 and len(rows[0]["id_hash"]) == 64
    assert set(rows[0].keys()) == {"id_hash", "created_at", "last_seen"}
    await db.close()
    for path in tmp_path.glob("sessions.db*"):
        raw = path.read_bytes()
        assert session_id.encode() not in raw and session.csrf_token.encode() not in raw


async def test_end_and_reprs_reveal_nothing(db: Store) -> None:
    store = sessions(db)
    session_id, session = await store.create()
    assert session_id not in repr(store) and session.csrf_token not in repr(session)
    await store.end(session_id)
    await store.end(session_id)  # twice is fine
    assert await store.get(session_id) is None


async def test_token_and_csrf_checks(db: Store) -> None:
    _, session = await sessions(db).create()
    assert check_csrf(session, session.csrf_token)
    assert not check_csrf(session, None) and not check_csrf(session, "")
    assert not check_csrf(session, session.csrf_token + "x")
    assert not check_csrf(session, "\udcff")  # a lone surrogate from a header: just wrong
    assert check_admin_token("t" * 40, "t" * 40)
    assert not check_admin_token("t" * 39, "t" * 40)
    assert not check_admin_token("é" * 40, "t" * 40)  # non-ASCII input is just wrong
    assert not check_admin_token("\ud800" * 40, "t" * 40)
