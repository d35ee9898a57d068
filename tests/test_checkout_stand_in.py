"""The local stand-in for Stripe's hosted Checkout page (control/portal/stand_in.py):
without a Stripe key, in test mode, sign-up's Checkout goes to the control plane's own
page, whose Pay sends the signed webhooks Stripe would, through the real webhook and
its signature check, to the real control plane on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from control.appkeys import INBOX
from control.billing.rules import SYNTHETIC_PRICE_PREFIX
from control.plans import DEFAULT_PLAN, Plan
from control.portal.install import SECURITY_HEADERS
from control.portal.stand_in import STAND_IN
from control.portal.state import PORTAL
from control.portal.stripe_checkout import StripeCheckout
from tests import stripe_events as se
from tests.fixtures import ControlPlane

PRO = Plan("pro", 2048, 1.0, 1024, 20, ("price_pro_monthly",))
JSON = {"Content-Type": "application/json"}


def stand_in_plane(control_factory: Callable[..., ControlPlane], **overrides: Any) -> ControlPlane:
    settings: dict[str, Any] = {
        "stripe_webhook_secret": se.WEBHOOK_SECRET,
        "stripe_secret_key": "",
        "plans": {"default": DEFAULT_PLAN, "pro": PRO},
        **overrides,
    }
    return control_factory(**settings)


async def call(
    plane: ControlPlane, method: str, path: str, json: Any = None, **kwargs: Any
) -> tuple[int, Any, dict[str, str]]:
    async with plane.session.request(method, plane.url + path, json=json, **kwargs) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, body, dict(r.headers)


async def sign_up(plane: ControlPlane, subdomain: str, plan: str = "default") -> str:
    """The sign-up page's request; the stand-in session id its Checkout URL names."""
    order = {"subdomain": subdomain, "plan": plan, "email": f"{subdomain}@example.com"}
    status, body, _ = await call(plane, "POST", "/portal/api/checkout", order)
    assert status == 201, body
    url = urlsplit(body["url"])
    assert url.netloc == urlsplit(plane.url).netloc  # our own page, not checkout.stripe.com
    prefix = "/portal/stand-in/checkout/"
    assert url.path.startswith(prefix)
    return url.path.removeprefix(prefix)


async def pay(plane: ControlPlane, session_id: str) -> tuple[int, Any]:
    path = f"/portal/api/stand-in/checkout/{session_id}/pay"
    status, body, _ = await call(plane, "POST", path, {})
    assert plane.app is not None
    async with asyncio.timeout(30):
        await plane.app[INBOX].idle.wait()
    return status, body


async def test_pay_on_the_stand_in_creates_the_user_through_the_signed_webhook(
    control_factory: Callable[..., ControlPlane],
) -> None:
    plane = stand_in_plane(control_factory)
    await plane.start()
    _, plans, _ = await call(plane, "GET", "/portal/api/plans")
    assert {p["name"] for p in plans["plans"]} == {"default", "pro"}  # no price needed here
    session_id = await sign_up(plane, "alice")
    status, page, headers = await call(plane, "GET", f"/portal/stand-in/checkout/{session_id}")
    assert status == 200 and "Local stand-in for Stripe Checkout" in page
    assert "<script>" not in page and "style=" not in page  # the CSP allows neither
    assert headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    status, order, _ = await call(plane, "GET", f"/portal/api/stand-in/checkout/{session_id}")
    assert status == 200
    assert order["subdomain"] == "alice" and order["plan"] == "default"
    assert order["price_id"] == f"{SYNTHETIC_PRICE_PREFIX}default"
    status, body = await pay(plane, session_id)
    assert status == 200, body
    assert urlsplit(body["redirect"]).path.startswith("/portal/status/")
    _, users, _ = await call(
        plane, "GET", "/v1/users", headers={"Authorization": f"Bearer {plane.admin_token}"}
    )
    (alice,) = users["users"]
    assert alice["subdomain"] == "alice" and alice["plan"] == "default"
    # The status page the buyer lands on knows the payment.
    token = urlsplit(body["redirect"]).path.rsplit("/", 1)[-1]
    status, progress, _ = await call(plane, "GET", f"/portal/api/status/{token}")
    assert status == 200 and progress["step"] == "placing", progress  # payment confirmed


async def test_a_plan_with_a_stripe_price_is_paid_at_that_price(
    control_factory: Callable[..., ControlPlane],
) -> None:
    plane = stand_in_plane(control_factory)
    await plane.start()
    session_id = await sign_up(plane, "bob", plan="pro")
    status, body = await pay(plane, session_id)
    assert status == 200, body
    _, bob, _ = await call(
        plane, "GET", "/v1/users", headers={"Authorization": f"Bearer {plane.admin_token}"}
    )
    assert bob["users"][0]["plan"] == "pro"


async def test_a_session_is_paid_once_and_an_unknown_one_is_not_found(
    control_factory: Callable[..., ControlPlane],
) -> None:
    plane = stand_in_plane(control_factory)
    await plane.start()
    session_id = await sign_up(plane, "carol")
    assert (await pay(plane, session_id))[0] == 200
    status, body = await pay(plane, session_id)
    assert status == 409 and body["error"]["code"] == "checkout_paid"
    status, body = await pay(plane, "cs_test_standin_nope")
    assert status == 404
    path = f"/portal/api/stand-in/checkout/{session_id}/pay"
    status, body, _ = await call(plane, "POST", path, data="{}")  # not JSON: a form's post
    assert status == 400


async def test_the_webhook_still_verifies_what_the_stand_in_sends(
    control_factory: Callable[..., ControlPlane],
) -> None:
    """A stand-in whose signing secret is not the webhook's is refused like any forger:
    nothing is created, and the buyer may try again."""
    plane = stand_in_plane(control_factory)
    await plane.start()
    assert plane.app is not None
    session_id = await sign_up(plane, "dave")
    stand_in = plane.app[STAND_IN]
    stand_in.settings = plane.settings.with_overrides(stripe_webhook_secret="whsec_wrong")
    status, body = await pay(plane, session_id)
    assert status == 503 and body["error"]["code"] == "payment_unavailable"
    _, users, _ = await call(
        plane, "GET", "/v1/users", headers={"Authorization": f"Bearer {plane.admin_token}"}
    )
    assert users["users"] == []
    assert stand_in.sessions[session_id].state == "open"


@pytest.mark.parametrize(
    "overrides",
    [
        {"stripe_secret_key": se.API_KEY},  # a real Stripe is configured
        {"stripe_livemode": True},  # live mode: never a free Pay button
        {"checkout_stand_in": "false"},
        {"stripe_webhook_secret": ""},  # nothing to sign with
    ],
)
async def test_the_stand_in_is_off_with_a_key_in_live_mode_or_when_turned_off(
    control_factory: Callable[..., ControlPlane], overrides: dict[str, Any]
) -> None:
    plane = stand_in_plane(control_factory, **overrides)
    await plane.start()
    assert plane.app is not None
    assert isinstance(plane.app[PORTAL].checkout, StripeCheckout)
    assert STAND_IN not in plane.app
    status, _, _ = await call(plane, "GET", "/portal/stand-in/checkout/cs_test_standin_x")
    assert status == 404
    status, _, _ = await call(plane, "POST", "/portal/api/stand-in/checkout/x/pay", {})
    assert status == 404


async def test_cancelling_on_the_billing_stand_in_sends_the_subscriptions_deletion(
    control_factory: Callable[..., ControlPlane],
) -> None:
    plane = stand_in_plane(control_factory)
    await plane.start()
    assert plane.app is not None
    assert (await pay(plane, await sign_up(plane, "erin")))[0] == 200
    admin = {"Authorization": f"Bearer {plane.admin_token}"}
    _, users, _ = await call(plane, "GET", "/v1/users", headers=admin)
    (erin,) = users["users"]
    url = plane.app[STAND_IN].billing_session(erin["user_id"], f"{plane.url}/portal/account")
    path = urlsplit(url).path
    status, page, _ = await call(plane, "GET", path)
    assert status == 200 and "Local stand-in for Stripe's billing portal" in page
    api = path.replace("/portal/stand-in/", "/portal/api/stand-in/")
    status, body, _ = await call(plane, "GET", api)
    assert status == 200 and body["subdomain"] == "erin", body
    status, body, _ = await call(plane, "POST", api + "/cancel", {})
    assert status == 200 and body["redirect"] == f"{plane.url}/portal/account", body
    async with asyncio.timeout(30):
        await plane.app[INBOX].idle.wait()
    _, erin, _ = await call(plane, "GET", f"/v1/users/{erin['user_id']}", headers=admin)
    assert erin["state"] == "deprovisioned", erin
    status, _, _ = await call(plane, "GET", "/portal/api/stand-in/billing/bps_nope")
    assert status == 404
