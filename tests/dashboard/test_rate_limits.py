"""Failed-credential limits per client address: the decisions as tables, then the real
app (dashboard sign-in, admin Bearer token, metrics token) with an injected clock."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from control.api import edge
from control.api.ratelimit import EVENT_BURST, EventGate, FailureLimiter
from control.appkeys import AUTH_GUARD, FLEET
from tests.dashboard.http import call, sign_in
from tests.fixtures import ControlPlane


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def use_clock(control: ControlPlane) -> Clock:
    clock = Clock()
    assert control.app is not None
    control.app[AUTH_GUARD].clock = clock
    return clock


# --- decisions ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("failures", "later", "wait"),
    [
        (9, 0.0, 0.0),  # within the burst
        (10, 0.0, 6.0),  # the burst is spent: one more in 6 s
        (10, 4.5, 1.5),
        (10, 6.0, 0.0),
        (15, 0.0, 6.0),  # failing while blocked does not dig deeper
        (10, 600.0, 0.0),
    ],
)
def test_retry_after(failures: int, later: float, wait: float) -> None:
    limiter = FailureLimiter(burst=10, refill_seconds=6.0)
    blocked = [limiter.fail("a", 100.0) for _ in range(failures)]
    assert blocked == [n >= 9 for n in range(failures)]
    assert limiter.retry_after("a", 100.0 + later) == pytest.approx(wait)
    assert limiter.retry_after("b", 100.0) == 0.0


def test_a_refilled_token_buys_exactly_one_more_failure() -> None:
    limiter = FailureLimiter(burst=3, refill_seconds=10.0)
    for _ in range(3):
        limiter.fail("a", 0.0)
    assert limiter.retry_after("a", 10.0) == 0.0
    assert limiter.fail("a", 10.0) is True
    assert limiter.retry_after("a", 10.0) == pytest.approx(10.0)


def test_memory_is_bounded_and_the_oldest_address_is_forgotten() -> None:
    limiter = FailureLimiter(burst=1, refill_seconds=60.0, max_keys=3)
    for n in range(5):
        limiter.fail(f"10.0.0.{n}", float(n))
    assert len(limiter) == 3
    assert limiter.retry_after("10.0.0.0", 5.0) == 0.0  # forgotten: may try again
    assert limiter.retry_after("10.0.0.4", 5.0) > 0


def test_the_event_gate_admits_a_burst_then_counts_what_it_leaves_out() -> None:
    gate = EventGate(burst=2, refill_seconds=60.0)
    assert [gate.admit(0.0) for _ in range(5)] == [0, 0, None, None, None]
    assert gate.admit(60.0) == 3
    assert gate.admit(61.0) is None


@pytest.mark.parametrize(
    ("peer", "forwarded", "trust", "key"),
    [
        ("203.0.113.9", None, False, "203.0.113.9"),
        ("203.0.113.9", "198.51.100.1", True, "203.0.113.9"),  # not from the local proxy
        ("127.0.0.1", "198.51.100.1", False, "127.0.0.1"),  # no proxy configured
        ("127.0.0.1", "198.51.100.1", True, "198.51.100.1"),
        ("127.0.0.1", "6.6.6.6, 198.51.100.1", True, "198.51.100.1"),  # right-most only
        ("127.0.0.1", "198.51.100.1, not-an-ip", True, "127.0.0.1"),
        ("::1", "2001:db8:1:2:3:4:5:6", True, "2001:db8:1:2::/64"),
        ("2001:db8::1", None, False, "2001:db8::/64"),
        ("::ffff:192.0.2.4", None, False, "192.0.2.4"),
        (None, None, False, "unknown"),
    ],
)
def test_client_key(peer: str | None, forwarded: str | None, trust: bool, key: str) -> None:
    assert edge.client_key(peer, forwarded, trust) == key


@pytest.mark.parametrize(
    ("public_url", "port", "proxy"),
    [
        ("http://127.0.0.1:8080", 8080, False),
        ("http://localhost:8080", 8080, False),
        ("http://[::1]:8080", 8080, False),
        ("http://127.0.0.1:8443", 8080, True),  # something else listens there
        ("http://127.0.0.1", 8080, True),
        ("https://127.0.0.1:8080", 8080, True),  # TLS ends in front of us
        ("https://fleet.example.com", 8080, True),
        ("http://fleet.example.com:8080", 8080, True),
        ("http://10.0.0.5:8080", 8080, True),
    ],
)
def test_behind_proxy(public_url: str, port: int, proxy: bool) -> None:
    assert edge.behind_proxy(public_url, port) is proxy


# --- the real app ------------------------------------------------------------------
async def auth_events(control: ControlPlane) -> list[str]:
    """Newest first. Read from the database: the test's own address may be blocked."""
    assert control.app is not None
    rows = await control.app[FLEET].store.fetch_all(
        "SELECT message FROM events WHERE kind = 'auth_blocked' ORDER BY id DESC"
    )
    return [row["message"] for row in rows]


async def test_dashboard_sign_in_is_limited_per_address(control: ControlPlane) -> None:
    clock = use_clock(control)
    for _ in range(10):
        reply, _ = await sign_in(control, "wrong-token")
        assert reply.status == 401
    # Blocked: even the right token is not compared, so guesses learn nothing.
    reply, signed = await sign_in(control)
    assert reply.status == 429 and signed is None
    assert reply.headers["Retry-After"] == "6"
    assert "Too many failed sign-ins" in reply.text and "6 seconds" in reply.text
    # X-Forwarded-For is not believed without a proxy in PUBLIC_URL.
    spoofed = await call(
        control,
        "POST",
        "/dashboard/login",
        data={"token": control.admin_token},
        headers={"X-Forwarded-For": "198.51.100.77"},
    )
    assert spoofed.status == 429
    clock.now += 6
    reply, signed = await sign_in(control)
    assert reply.status == 303 and signed is not None
    assert len(await auth_events(control)) == 1


async def test_admin_bearer_guesses_get_a_json_429(control: ControlPlane) -> None:
    use_clock(control)
    _, signed = await sign_in(control)
    assert signed is not None
    for _ in range(10):
        status, _ = await control.admin("GET", "/v1/users", token="wrong-" + "x" * 40)
        assert status == 401
    reply = await call(
        control, "GET", "/v1/users", headers={"Authorization": f"Bearer {control.admin_token}"}
    )
    assert reply.status == 429 and reply.headers["Retry-After"] == "6"
    assert reply.json()["error"]["code"] == "rate_limited"
    assert "Retry-After" in reply.json()["error"]["message"]
    # A session already signed in presents no credential: it keeps working.
    assert (await call(control, "GET", "/v1/users", headers=signed.cookie)).status == 200
    # Non-ASCII in the header is a wrong token like any other, not a 500.
    odd = await call(control, "GET", "/v1/users", headers={"Authorization": "Bearer é"})
    assert odd.status == 429
    (message,) = await auth_events(control)
    assert "admin token" in message and "127.0.0.1" in message
    metrics = await call(control, "GET", "/metrics")
    assert 'clawfleet_auth_rate_limited_total{surface="admin token"} 2.0' in metrics.text


async def test_behind_a_proxy_each_client_has_its_own_limit_and_events_are_capped(
    control_factory: Callable[..., ControlPlane],
) -> None:
    control = control_factory(public_url="https://fleet.example.com")
    await control.start()
    clock = use_clock(control)
    attackers = [f"198.51.100.{n}" for n in range(EVENT_BURST + 7)]
    for address in attackers:
        for _ in range(10):
            reply = await call(
                control,
                "POST",
                "/dashboard/login",
                data={"token": "guess"},
                # What the client sent first is ignored; the proxy's own entry counts.
                headers={"X-Forwarded-For": f"10.9.9.9, {address}"},
            )
            assert reply.status == 401
    blocked = await call(
        control,
        "POST",
        "/dashboard/login",
        data={"token": control.admin_token},
        headers={"X-Forwarded-For": attackers[0]},
    )
    assert blocked.status == 429
    operator = await call(
        control,
        "POST",
        "/dashboard/login",
        data={"token": control.admin_token},
        headers={"X-Forwarded-For": "192.0.2.10"},
    )
    assert operator.status == 303
    assert len(await auth_events(control)) == EVENT_BURST
    clock.now += 60
    for _ in range(10):
        await call(
            control,
            "POST",
            "/dashboard/login",
            data={"token": "guess"},
            headers={"X-Forwarded-For": "203.0.113.200"},
        )
    messages = await auth_events(control)
    assert len(messages) == EVENT_BURST + 1
    assert "7 more blocks not recorded" in messages[0]  # newest first


async def test_metrics_token_guesses_count_too(
    control_factory: Callable[..., ControlPlane],
) -> None:
    token = "metrics-token-" + "m" * 30
    control = control_factory(public_url="https://fleet.example.com", metrics_token=token)
    await control.start()
    use_clock(control)
    for _ in range(10):
        reply = await call(control, "GET", "/metrics", headers={"Authorization": "Bearer nope"})
        assert reply.status == 401
    reply = await call(control, "GET", "/metrics", headers={"Authorization": f"Bearer {token}"})
    assert reply.status == 429 and reply.json()["error"]["code"] == "rate_limited"
