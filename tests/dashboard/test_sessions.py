"""The in-memory session store: ids, CSRF tokens, idle and absolute expiry, the cap."""

from __future__ import annotations

from control.sessions import SessionStore, check_admin_token, check_csrf


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sessions_are_random_and_carry_their_own_csrf_token() -> None:
    store = SessionStore()
    ids = set()
    for _ in range(50):
        session_id, session = store.create()
        assert len(session_id) >= 43 and session.csrf_token != session_id
        assert store.get(session_id) is session
        ids.add(session_id)
    assert len(ids) == 50
    assert store.get("unknown") is None and store.get(None) is None and store.get("") is None


def test_idle_sessions_expire_and_use_keeps_them_alive() -> None:
    clock = Clock()
    store = SessionStore(idle_timeout=100, max_age=1000, clock=clock)
    active, _ = store.create()
    idle, _ = store.create()
    for _ in range(3):
        clock.now += 60
        assert store.get(active) is not None
    assert store.get(idle) is None  # 180 s without use
    assert len(store) == 1


def test_sessions_end_at_max_age_even_when_used() -> None:
    clock = Clock()
    store = SessionStore(idle_timeout=100, max_age=250, clock=clock)
    session_id, _ = store.create()
    for _ in range(4):
        clock.now += 60
        assert store.get(session_id) is not None
    clock.now += 60  # 300 s old
    assert store.get(session_id) is None


def test_the_least_recently_used_session_goes_first_at_the_cap() -> None:
    store = SessionStore(max_sessions=2)
    first, _ = store.create()
    second, _ = store.create()
    assert store.get(first) is not None  # first is now the most recently used
    third, _ = store.create()
    assert store.get(second) is None
    assert store.get(first) is not None and store.get(third) is not None


def test_end_and_reprs_reveal_nothing() -> None:
    store = SessionStore()
    session_id, session = store.create()
    assert session_id not in repr(store) and session.csrf_token not in repr(session)
    store.end(session_id)
    store.end(session_id)  # twice is fine
    assert store.get(session_id) is None


def test_token_and_csrf_checks() -> None:
    _, session = SessionStore().create()
    assert check_csrf(session, session.csrf_token)
    assert not check_csrf(session, None) and not check_csrf(session, "")
    assert not check_csrf(session, session.csrf_token + "x")
    assert check_admin_token("t" * 40, "t" * 40)
    assert not check_admin_token("t" * 39, "t" * 40)
    assert not check_admin_token("é" * 40, "t" * 40)  # non-ASCII input is just wrong
