"""Portal sessions on a real database with a test's clock: idle and absolute expiry, the
per-address cap, ending every session of one address only, and a CSRF token that is
per session and never a dashboard one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from control.api.sessions import SessionStore
from control.db.store import Store
from control.portal import customer_sessions as cs

SECRET = "s" * 40


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    db = Store(str(tmp_path / "sessions.db"))
    await db.open()
    yield db
    await db.close()


@pytest.mark.parametrize(
    ("idle", "age", "live"),
    [
        (0.0, 0.0, True),
        (cs.IDLE_TIMEOUT, cs.IDLE_TIMEOUT, True),  # exactly at the limit: still live
        (cs.IDLE_TIMEOUT + 1, cs.IDLE_TIMEOUT + 1, False),
        (0.0, cs.MAX_AGE + 1, False),  # kept busy, still ends at its maximum age
    ],
)
async def test_expiry(store: Store, idle: float, age: float, live: bool) -> None:
    clock = Clock()
    sessions = cs.PortalSessions(lambda: store, SECRET, clock)
    sid, _ = await sessions.create("a@example.com")
    # Used every half idle timeout up to `age - idle`, then left alone for `idle`.
    used_until = clock.now + age - idle
    while clock.now + cs.IDLE_TIMEOUT / 2 < used_until:
        clock.now += cs.IDLE_TIMEOUT / 2
        assert await sessions.get(sid) is not None
    clock.now = used_until + idle
    assert (await sessions.get(sid) is not None) == live


async def test_an_address_keeps_at_most_its_cap(store: Store) -> None:
    clock = Clock()
    sessions = cs.PortalSessions(lambda: store, SECRET, clock)
    ids = []
    for _ in range(cs.MAX_PER_EMAIL + 2):
        clock.now += 1
        ids.append((await sessions.create("a@example.com"))[0])
    other, _ = await sessions.create("b@example.com")
    live = [sid for sid in ids if await sessions.get(sid) is not None]
    assert live == ids[2:]  # the least recently used went first
    assert await sessions.get(other) is not None


async def test_end_all_ends_one_address_only(store: Store) -> None:
    sessions = cs.PortalSessions(lambda: store, SECRET)
    a1, _ = await sessions.create("a@example.com")
    a2, _ = await sessions.create("a@example.com")
    b, _ = await sessions.create("b@example.com")
    await sessions.end_all("a@example.com")
    assert await sessions.get(a1) is None and await sessions.get(a2) is None
    assert await sessions.get(b) is not None


async def test_csrf_tokens_are_per_session_and_not_the_dashboards(store: Store) -> None:
    sessions = cs.PortalSessions(lambda: store, SECRET)
    sid, one = await sessions.create("a@example.com")
    _, two = await sessions.create("a@example.com")
    assert one.csrf_token != two.csrf_token
    assert sessions.check_csrf(one, one.csrf_token)
    assert not sessions.check_csrf(one, two.csrf_token)
    assert not sessions.check_csrf(one, None) and not sessions.check_csrf(one, "\udcff")
    dashboard = SessionStore(lambda: store, SECRET)
    assert dashboard._csrf(sid) != one.csrf_token
    assert "a@example.com" not in repr(one) and sid not in repr(sessions)
