"""The customer's page: state and URL, a fresh sign-in link into the agent, API keys
through the admin API's own secret path (the container restarts with them, values
never echoed), rotating access (every session ends, the agent's too), Stripe's
billing portal through the stripe library; and a customer sees only their own user:
every endpoint is tried against another customer's."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from control.portal.customers import LIMITS
from shared import signin
from tests.dashboard.http import Reply, call
from tests.fakes.stripe_api import StripeFake, stripe_fake_fixture  # noqa: F401
from tests.fixtures import ControlPlane
from tests.portal_customers import (
    Inbox,
    Signed,
    add_customer,
    portal_plane,
    sign_in,
    smtp,  # noqa: F401
    status_token,
)
from tests.portal_signup import HEALTHY
from tests.test_protocol import registered

KEY = "sk-ant-portal-" + "v4lu3" * 8
AGENT = "/portal/api/account/agents/{}"
# Every account endpoint on a user: (method, path suffix, JSON body).
ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "", None),
    ("POST", "/open", {}),
    ("PUT", "/settings", {"ANTHROPIC_API_KEY": "sk-evil"}),
    ("POST", "/billing-portal", {}),
    ("POST", "/restart", {}),
    ("POST", "/rotate", {}),  # last: it ends the caller's session too
]


@pytest.fixture
async def plane(
    control_factory: Callable[..., ControlPlane],
    smtp: tuple[Inbox, int],  # noqa: F811
    stripe_fake: StripeFake,
) -> ControlPlane:
    cp = portal_plane(control_factory, smtp[1], stripe_fake)
    await cp.start()
    stripe_fake.customers.update({"cus_alice", "cus_bob"})
    await add_customer(cp, "alice", "alice@example.com", "cus_alice")
    await add_customer(cp, "bob", "bob@example.com", "cus_bob")
    return cp


@pytest.fixture
def inbox(smtp: tuple[Inbox, int]) -> Inbox:  # noqa: F811
    return smtp[0]


async def on(plane: ControlPlane, who: Signed, method: str, path: str, body: Any = None) -> Reply:
    return await call(plane, method, path, headers=who.headers(), json=body)


async def bob_as_admin_sees(plane: ControlPlane) -> tuple[Any, Any, Any]:
    _, access = await plane.admin("GET", "/v1/users/bob/access")
    _, names = await plane.admin("GET", "/v1/users/bob/secrets")
    _, user = await plane.admin("GET", "/v1/users/bob")
    return access, names, user["state"]


async def test_a_customer_reaches_no_other_customers_user(
    plane: ControlPlane, inbox: Inbox, stripe_fake: StripeFake
) -> None:
    await registered(plane)
    alice = await sign_in(plane, inbox, "alice@example.com")
    before = await bob_as_admin_sees(plane)
    account = (await on(plane, alice, "GET", "/portal/api/account")).json()
    assert [a["user_id"] for a in account["agents"]] == ["alice"]
    assert "bob" not in str(account)
    for user_id in ("bob", "nobody", "..", "alice/../bob"):
        for method, suffix, body in ENDPOINTS:
            reply = await on(plane, alice, method, AGENT.format(user_id) + suffix, body)
            assert reply.status == 404, (method, user_id, suffix, reply.text)
            assert "bob@" not in reply.text and "cus_bob" not in reply.text
    assert await bob_as_admin_sees(plane) == before
    assert stripe_fake.billing_portal_sessions == []
    # The same calls on her own agent work: the 404s were not for some other reason.
    for method, suffix, body in ENDPOINTS:
        reply = await on(plane, alice, method, AGENT.format("alice") + suffix, body)
        assert reply.status in (200, 201), (method, suffix, reply.text)


async def test_no_admin_data_from_a_customer_session(plane: ControlPlane, inbox: Inbox) -> None:
    alice = await sign_in(plane, inbox, "alice@example.com")
    for path in ("/v1/users", "/v1/users/alice", "/v1/users/alice/access", "/v1/servers"):
        assert (await on(plane, alice, "GET", path)).status == 401
    assert (await on(plane, alice, "GET", "/dashboard/api/session")).status == 401
    view = (await on(plane, alice, "GET", AGENT.format("alice"))).json()
    assert set(view) == {
        "user_id", "subdomain", "url", "plan", "state", "billing_status", "deleted_after",
        "settings",
    }  # fmt: skip


@pytest.mark.parametrize(("method", "suffix", "body"), ENDPOINTS[1:])
async def test_every_change_needs_the_csrf_token_and_json(
    plane: ControlPlane, inbox: Inbox, method: str, suffix: str, body: Any
) -> None:
    alice = await sign_in(plane, inbox, "alice@example.com")
    path = AGENT.format("alice") + suffix
    no_token = await call(plane, method, path, headers=alice.headers(csrf=False), json=body)
    assert no_token.status == 403 and no_token.json()["error"]["code"] == "csrf_failed"
    wrong = {**alice.headers(csrf=False), "X-CSRF-Token": "x" * 43}
    assert (await call(plane, method, path, headers=wrong, json=body)).status == 403
    form = await call(plane, method, path, headers=alice.headers(), data={"a": "b"})
    assert form.status == 415
    signed_out = await call(plane, method, path, json=body)
    assert signed_out.status == 401
    _, names = await plane.admin("GET", "/v1/users/alice/secrets")
    assert names["names"] == []


async def test_keys_restart_the_agent_with_them_and_are_never_shown(
    plane: ControlPlane, inbox: Inbox
) -> None:
    worker = await registered(plane)
    alice = await sign_in(plane, inbox, "alice@example.com")
    first = await worker.assignments()
    reply = await on(
        plane, alice, "PUT", AGENT.format("alice") + "/settings", {"ANTHROPIC_API_KEY": KEY}
    )
    assert reply.status == 200 and reply.json()["set"] == ["ANTHROPIC_API_KEY"]
    assert KEY not in reply.text
    after = await worker.assignments()
    spec = next(c for c in after.body["containers"] if c["user_id"] == "alice")
    assert (
        spec["spec_hash"]
        != next(c for c in first.body["containers"] if c["user_id"] == "alice")["spec_hash"]
    )
    assert spec["secret_files"][0]["content"] == f"ANTHROPIC_API_KEY={KEY}\n"
    view = await on(plane, alice, "GET", AGENT.format("alice"))
    assert view.json()["settings"]["set"] == ["ANTHROPIC_API_KEY"] and KEY not in view.text
    refused = await on(plane, alice, "PUT", AGENT.format("alice") + "/settings", {"PATH": "/x"})
    assert refused.status == 400 and refused.json()["error"]["code"] == "unknown_secret"


async def test_open_gives_a_fresh_link_into_her_agent(plane: ControlPlane, inbox: Inbox) -> None:
    await registered(plane)
    alice = await sign_in(plane, inbox, "alice@example.com")
    reply = await on(plane, alice, "POST", AGENT.format("alice") + "/open", {})
    assert reply.status == 201, reply.text
    (ticket,) = parse_qs(urlsplit(reply.json()["url"]).query)["ticket"]
    _, access = await plane.admin("GET", "/v1/users/alice/access")
    key = signin.signin_key(access["token"])
    assert signin.check_ticket(key, "alice", ticket, time.time()) is not None


async def test_rotating_access_ends_every_session(plane: ControlPlane, inbox: Inbox) -> None:
    await registered(plane)
    alice = await sign_in(plane, inbox, "alice@example.com")
    elsewhere = await sign_in(plane, inbox, "alice@example.com")
    bob = await sign_in(plane, inbox, "bob@example.com")
    _, old = await plane.admin("GET", "/v1/users/alice/access")
    reply = await on(plane, alice, "POST", AGENT.format("alice") + "/rotate", {})
    assert reply.status == 200
    _, new = await plane.admin("GET", "/v1/users/alice/access")
    assert new["token"] != old["token"]  # the agent's sign-ins end with its old key
    assert (await on(plane, elsewhere, "GET", "/portal/api/account")).status == 401
    assert (await on(plane, alice, "GET", "/portal/api/account")).status == 401
    assert (await on(plane, bob, "GET", "/portal/api/account")).status == 200
    fresh = reply.set_cookies[0].split(";")[0].split("=", 1)[1]
    renewed = Signed(fresh, reply.json()["csrf_token"])
    assert (await on(plane, renewed, "GET", "/portal/api/account")).status == 200


async def test_rotating_access_ends_the_status_page_and_its_open(
    plane: ControlPlane, inbox: Inbox
) -> None:
    """The status page's Open makes sign-in links for as long as the page lives (72 h by
    default), and its link may have leaked: "Sign out everywhere" ends it too."""
    worker = await registered(plane)
    await worker.heartbeat([{"user_id": "alice", **HEALTHY}])
    api = "/portal/api/status/" + status_token("alice")
    assert (await call(plane, "POST", api + "/open")).status == 201
    alice = await sign_in(plane, inbox, "alice@example.com")
    assert (await on(plane, alice, "POST", AGENT.format("alice") + "/rotate", {})).status == 200
    for method, path in (("GET", api), ("POST", api + "/open")):
        reply = await call(plane, method, path)
        assert reply.status == 410 and reply.json()["error"]["code"] == "link_expired", path
    bob = "/portal/api/status/" + status_token("bob")
    assert (await call(plane, "GET", bob)).status == 200  # another customer's page stays
    assert (await call(plane, "GET", api)).status == 410  # a poll never revives it


async def test_the_status_pages_open_counts_against_the_address(plane: ControlPlane) -> None:
    """Each Open is a fresh sign-in link: a leaked status link is not an unbounded
    source of them (the customer page's Open shares the address's allowance)."""
    worker = await registered(plane)
    await worker.heartbeat([{"user_id": "alice", **HEALTHY}])
    api = "/portal/api/status/" + status_token("alice") + "/open"
    burst = plane.app[LIMITS].account_links.burst if plane.app is not None else 0
    for _ in range(burst):
        assert (await call(plane, "POST", api)).status == 201
    refused = await call(plane, "POST", api)
    assert refused.status == 429 and "Retry-After" in refused.headers


async def test_billing_portal_session_through_stripe(
    plane: ControlPlane, inbox: Inbox, stripe_fake: StripeFake
) -> None:
    alice = await sign_in(plane, inbox, "alice@example.com")
    reply = await on(plane, alice, "POST", AGENT.format("alice") + "/billing-portal", {})
    assert reply.status == 201, reply.text
    (session,) = stripe_fake.billing_portal_sessions
    assert session["customer"] == "cus_alice"
    assert session["return_url"] == f"{plane.url}/portal/account"
    assert reply.json() == {"url": session["url"]}
    stripe_fake.inject(500)
    failed = await on(plane, alice, "POST", AGENT.format("alice") + "/billing-portal", {})
    assert failed.status == 503 and stripe_fake.api_key not in failed.text


async def test_the_page_says_what_cancelling_means(plane: ControlPlane, inbox: Inbox) -> None:
    alice = await sign_in(plane, inbox, "alice@example.com")
    account = (await on(plane, alice, "GET", "/portal/api/account")).json()
    assert account["retention_days"] == plane.settings.retention_days
    page = await call(plane, "GET", "/portal/account", headers=alice.headers())
    assert page.status == 200 and "If you cancel" in page.text
    assert "script-src" not in page.headers["Content-Security-Policy"]  # default-src 'self'
    assert page.headers["Cache-Control"] == "no-store"
    assert (await call(plane, "GET", "/portal/account")).status == 302
