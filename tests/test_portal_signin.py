"""Returning customers sign in with a one-time link mailed over a real SMTP server:
single use, expiring, stored hashed, only the latest works, rate-limited per address
and per client address, and the answer never says whether an address is known."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from control.appkeys import STORE
from control.db.store import Store
from control.portal import login_links
from control.portal.customer_sessions import COOKIE_NAME
from tests.dashboard.http import call
from tests.fakes.stripe_api import StripeFake, stripe_fake_fixture  # noqa: F401
from tests.fixtures import ControlPlane
from tests.portal_customers import (
    MAIL_FROM,
    Inbox,
    add_customer,
    ask_link,
    cookie_of,
    link_in,
    portal_plane,
    redeem,
    sign_in,
    smtp,  # noqa: F401
)


@pytest.fixture
async def plane(
    control_factory: Callable[..., ControlPlane],
    smtp: tuple[Inbox, int],  # noqa: F811
    stripe_fake: StripeFake,
) -> ControlPlane:
    cp = portal_plane(control_factory, smtp[1], stripe_fake)
    await cp.start()
    await add_customer(cp, "alice", "Alice@Example.com")
    return cp


@pytest.fixture
def inbox(smtp: tuple[Inbox, int]) -> Inbox:  # noqa: F811
    return smtp[0]


async def test_a_mailed_link_signs_in_once(plane: ControlPlane, inbox: Inbox) -> None:
    reply = await ask_link(plane, "  alice@EXAMPLE.com ")
    assert reply.status == 202, reply.text
    recipients, message = await inbox.next()
    assert recipients == ["alice@example.com"]
    assert message["From"].addresses[0].addr_spec == MAIL_FROM  # under PORTAL_PRODUCT_NAME
    url, token = link_in(message)
    assert url == f"{plane.url}/portal/signin/link"  # the token rides in the fragment
    assert token not in reply.text

    spent = await redeem(plane, token)
    assert spent.status == 200, spent.text
    session_id = cookie_of(spent)
    assert session_id is not None
    account = await call(
        plane, "GET", "/portal/api/account", headers={"Cookie": f"{COOKIE_NAME}={session_id}"}
    )
    assert account.status == 200
    assert [a["user_id"] for a in account.json()["agents"]] == ["alice"]

    again = await redeem(plane, token)
    assert again.status == 400 and again.json()["error"]["code"] == "link_invalid"
    assert cookie_of(again) is None


async def test_the_answer_is_the_same_for_an_unknown_address(
    plane: ControlPlane, inbox: Inbox
) -> None:
    unknown = await ask_link(plane, "mallory@example.com")
    known = await ask_link(plane, "alice@example.com")
    assert (unknown.status, unknown.text) == (known.status, known.text) == (202, known.text)
    recipients, _ = await inbox.next()  # the first mail is alice's: none went to mallory
    assert recipients == ["alice@example.com"]
    assert inbox.messages.empty()


async def test_only_the_latest_link_works(plane: ControlPlane, inbox: Inbox) -> None:
    await ask_link(plane, "alice@example.com")
    _, token_1 = link_in((await inbox.next())[1])
    await ask_link(plane, "alice@example.com")
    _, token_2 = link_in((await inbox.next())[1])
    assert (await redeem(plane, token_1)).status == 400
    assert (await redeem(plane, token_2)).status == 200


async def test_links_are_stored_hashed_and_expire(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "links.db"))
    await store.open()
    try:
        now = time.time()
        token = await store.write(lambda c: login_links.issue(c, "a@example.com", now))
        rows = await store.fetch_all("SELECT token_hash FROM portal_login_links")
        assert [r["token_hash"] for r in rows] == [hashlib.sha256(token.encode()).hexdigest()]
        late = now + login_links.LINK_SECONDS
        assert await store.write(lambda c: login_links.redeem(c, token, late)) is None
        just_in_time = late - 1
        found = await store.write(lambda c: login_links.redeem(c, token, just_in_time))
        assert found == "a@example.com"
    finally:
        await store.close()


async def test_links_are_limited_per_address_and_per_client(
    plane: ControlPlane, inbox: Inbox
) -> None:
    for _ in range(3):
        assert (await ask_link(plane, "alice@example.com")).status == 202
    limited = await ask_link(plane, "ALICE@example.com")
    assert limited.status == 429 and int(limited.headers["Retry-After"]) > 0
    # Another address from the same client still gets its answer, up to the client's limit.
    statuses = [(await ask_link(plane, f"u{i}@example.com")).status for i in range(7)]
    assert statuses == [202] * 6 + [429]


async def test_failed_redemptions_are_limited_per_client(plane: ControlPlane) -> None:
    statuses = [(await redeem(plane, f"guess-{i}")).status for i in range(11)]
    assert statuses == [400] * 10 + [429]


async def test_the_session_cookie_is_the_portals_own(plane: ControlPlane, inbox: Inbox) -> None:
    await ask_link(plane, "alice@example.com")
    _, token = link_in((await inbox.next())[1])
    reply = await call(
        plane,
        "POST",
        "/portal/api/signin/redeem",
        json={"token": token},
        headers={"X-Forwarded-Proto": "https"},
    )
    (cookie,) = [c for c in reply.set_cookies if c.startswith(COOKIE_NAME + "=")]
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "path=/portal", "samesite=strict", "secure"} <= attributes
    assert plane.app is not None
    rows = await plane.app[STORE].fetch_all("SELECT id_hash FROM portal_sessions")
    session_id = cookie_of(reply)
    assert session_id is not None
    assert [r["id_hash"] for r in rows] == [hashlib.sha256(session_id.encode()).hexdigest()]
    # Not a dashboard session: the admin API and the dashboard refuse it.
    dashboard = {"Cookie": f"clawfleet_session={session_id}"}
    assert (await call(plane, "GET", "/v1/users", headers=dashboard)).status == 401
    assert (await call(plane, "GET", "/dashboard/api/session", headers=dashboard)).status == 401


async def test_sign_out_needs_csrf_and_ends_the_session(plane: ControlPlane, inbox: Inbox) -> None:
    signed = await sign_in(plane, inbox, "alice@example.com")
    refused = await call(plane, "POST", "/portal/api/signout", headers=signed.headers(csrf=False))
    assert refused.status == 403
    done = await call(plane, "POST", "/portal/api/signout", headers=signed.headers(), json={})
    assert done.status == 204
    after = await call(plane, "GET", "/portal/api/account", headers=signed.headers())
    assert after.status == 401


async def test_without_smtp_sign_in_by_mail_is_off(
    control_factory: Callable[..., ControlPlane],
) -> None:
    # A Stripe key: not the local demo, which logs links instead (test_portal_demo_signin.py).
    cp = control_factory(stripe_secret_key="sk_test_" + "k" * 24)
    await cp.start()
    reply = await ask_link(cp, "alice@example.com")
    assert reply.status == 503 and reply.json()["error"]["code"] == "mail_off"
