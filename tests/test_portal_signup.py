"""Sign-up through the real control plane on 127.0.0.1, the real `stripe` library and the
fake Stripe API: the Checkout Session it asks for, the reservation of the name while it
is open (two buyers, one name), validation, Stripe failing, the per-address limit, and
the buyer coming back without paying."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import pytest

from control.portal.install import CSP
from tests import stripe_events as se
from tests.fakes.stripe_api import StripeFake
from tests.fixtures import ControlPlane
from tests.portal_signup import call, deliver, portal_plane, session_of, sign_up, status_path

SESSIONS = "/v1/checkout/sessions"


@pytest.fixture
async def plane(
    control_factory: Callable[..., ControlPlane], stripe_fake: StripeFake
) -> ControlPlane:
    cp = portal_plane(control_factory, stripe_fake, portal_checkouts_per_hour=5)
    await cp.start()
    return cp


async def available(plane: ControlPlane, name: str) -> dict[str, object]:
    reply = await call(plane, "GET", "/portal/api/availability", params={"subdomain": name})
    assert reply.status == 200
    return dict(reply.body)


async def test_checkout_asks_stripe_for_the_plan_and_creates_nothing(
    plane: ControlPlane, stripe_fake: StripeFake
) -> None:
    assert (await available(plane, "alice"))["available"] is True
    reply = await sign_up(plane)
    assert reply.status == 201, reply.body
    assert reply.body["url"].startswith("https://checkout.stripe.com/c/pay/cs_test_")
    asked = stripe_fake.checkout.requests[session_of(stripe_fake, reply.body["url"])]
    user_id = asked["client_reference_id"]
    assert user_id.startswith("alice-")
    assert asked["mode"] == "subscription"
    assert asked["line_items"] == [{"price": se.PRICE, "quantity": "1"}]
    assert asked["metadata"] == {"user_id": user_id, "subdomain": "alice"}
    assert asked["subscription_data"] == {"metadata": asked["metadata"]}
    assert asked["customer_email"] == "alice@example.com"
    success, cancel = urlsplit(asked["success_url"]), urlsplit(asked["cancel_url"])
    assert asked["success_url"].startswith(plane.url + "/portal/status/")
    assert cancel.path == "/portal/signup"
    assert parse_qs(cancel.query)["back"] == [success.path.rsplit("/", 1)[-1]]
    assert stripe_fake.count(SESSIONS) == 1
    # The name is held for this buyer; nothing exists until Stripe's webhook says so.
    assert await available(plane, "alice") == {
        "subdomain": "alice",
        "available": False,
        "reason": "this name is taken",
    }
    status, users = await plane.admin("GET", "/v1/users")
    assert status == 200 and users["users"] == []
    assert reply.headers["Content-Security-Policy"] == CSP
    assert reply.headers["Cache-Control"] == "no-store"


async def test_two_buyers_one_name(plane: ControlPlane, stripe_fake: StripeFake) -> None:
    first, second = await asyncio.gather(
        sign_up(plane, email="a@example.com"), sign_up(plane, email="b@example.com")
    )
    assert sorted([first.status, second.status]) == [201, 409]
    loser = first if first.status == 409 else second
    assert loser.body["error"]["code"] == "subdomain_taken"
    assert stripe_fake.count(SESSIONS) == 1  # the loser never reached Stripe


async def test_a_payment_elsewhere_cannot_take_a_reserved_name(
    plane: ControlPlane, stripe_fake: StripeFake
) -> None:
    reply = await sign_up(plane)
    # Another checkout (say an operator's Payment Link) paid for the same name first.
    other = se.checkout_session(
        client_reference_id="mallory", metadata={"subdomain": "alice"}, subscription_id="sub_m"
    )
    stripe_fake.subscriptions["sub_m"] = se.subscription(id_="sub_m")
    stripe_fake.subscriptions[se.SUBSCRIPTION] = se.subscription(customer="cus_alice")
    await deliver(plane, se.event("checkout.session.completed", other))
    _, mallory = await plane.admin("GET", "/v1/users/mallory")
    assert mallory["subdomain"] == "mallory"  # not the name alice holds
    session_id = session_of(stripe_fake, reply.body["url"])
    session = stripe_fake.checkout.complete(session_id, "cus_alice", se.SUBSCRIPTION)
    await deliver(plane, se.event("checkout.session.completed", session))
    user_id = session["client_reference_id"]
    _, alice = await plane.admin("GET", f"/v1/users/{user_id}")
    assert alice["subdomain"] == "alice"


@pytest.mark.parametrize(
    ("subdomain", "reason"),
    [
        ("Alice", "a DNS label"),
        ("-alice", "a DNS label"),
        ("alice-", "a DNS label"),
        ("al_ice", "a DNS label"),
        ("a" * 64, "a DNS label"),
        ("alice\n", "a DNS label"),  # a trailing newline: full match only
        ("älice", "a DNS label"),  # not ASCII
        ("al ice", "a DNS label"),
        ("", "a DNS label"),
        ("www", "'www' is reserved"),
    ],
)
async def test_names_follow_the_admin_api_rules(
    plane: ControlPlane, stripe_fake: StripeFake, subdomain: str, reason: str
) -> None:
    answer = await available(plane, subdomain)
    assert answer["available"] is False and reason in str(answer["reason"])
    assert answer["subdomain"] == subdomain
    order = {"subdomain": subdomain, "plan": "pro", "email": "a@b.co"}
    reply = await call(plane, "POST", "/portal/api/checkout", order)
    assert reply.status == 400 and reason in reply.body["error"]["message"]
    assert stripe_fake.count(SESSIONS) == 0


@pytest.mark.parametrize(
    ("order", "field"),
    [
        ({"subdomain": "alice", "plan": "pro", "email": "not-an-address"}, "email"),
        ({"subdomain": "alice", "plan": "pro", "email": "a@b.co\n"}, "email"),
        ({"subdomain": "alice", "plan": "gold", "email": "a@b.co"}, "plan"),
        ({"subdomain": "alice", "plan": "default", "email": "a@b.co"}, "plan"),  # no price
        ({"subdomain": "alice", "plan": "pro"}, "email"),
        ({"subdomain": "alice", "plan": "pro", "email": "a@b.co", "admin": True}, "admin"),
    ],
)
async def test_orders_are_validated_before_stripe(
    plane: ControlPlane, stripe_fake: StripeFake, order: dict[str, object], field: str
) -> None:
    reply = await call(plane, "POST", "/portal/api/checkout", order)
    assert reply.status == 400 and field in reply.body["error"]["message"], reply.body
    assert stripe_fake.count(SESSIONS) == 0
    assert (await available(plane, "alice"))["available"] is True


async def test_plans_are_the_ones_with_a_price(
    plane: ControlPlane, stripe_fake: StripeFake
) -> None:
    stripe_fake.prices.add(se.PRICE, 1900, "eur", "Pro agent")
    reply = await call(plane, "GET", "/portal/api/plans")
    assert reply.body["plans"] == [
        {
            "name": "pro",
            "display_name": "Pro agent",  # the Stripe Price's Product
            "price": "€19.00 a month",
            "demo": False,
            "memory_mb": 2048,
            "cpus": 1.0,
            "disk_gb": 20,
        }
    ]


@pytest.mark.parametrize(
    ("status", "type_"),
    [(500, "api_error"), (429, "rate_limit_error"), (401, "authentication_error")],
)
async def test_stripe_failing_releases_the_name(
    plane: ControlPlane, stripe_fake: StripeFake, status: int, type_: str
) -> None:
    stripe_fake.inject(status, type_)
    reply = await sign_up(plane)
    assert reply.status == 503 and reply.body["error"]["code"] == "payment_unavailable"
    assert "try again" in reply.body["error"]["message"]
    assert stripe_fake.api_key not in str(reply.body)
    assert (await available(plane, "alice"))["available"] is True
    assert (await sign_up(plane)).status == 201


async def test_a_price_stripe_does_not_know_is_refused(
    plane: ControlPlane, stripe_fake: StripeFake
) -> None:
    stripe_fake.checkout.prices.clear()
    reply = await sign_up(plane)
    assert reply.status == 503 and reply.body["error"]["code"] == "payment_unavailable"
    assert (await available(plane, "alice"))["available"] is True


async def test_checkouts_are_limited_per_address(
    plane: ControlPlane, stripe_fake: StripeFake
) -> None:
    for n in range(5):
        assert (await sign_up(plane, f"name{n}")).status == 201
    refused = await sign_up(plane, "name5")
    assert refused.status == 429 and refused.body["error"]["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) > 0
    assert stripe_fake.count(SESSIONS) == 5
    assert (await available(plane, "name5"))["available"] is True  # nothing reserved


async def test_coming_back_without_paying_releases_the_name(
    plane: ControlPlane, stripe_fake: StripeFake
) -> None:
    reply = await sign_up(plane)
    session_id = session_of(stripe_fake, reply.body["url"])
    token = status_path(stripe_fake, session_id).rsplit("/", 1)[-1]
    back = await call(plane, "POST", f"/portal/api/status/{token}/cancel")
    assert back.status == 200
    assert back.body == {"subdomain": "alice", "plan": "pro", "email": "alice@example.com"}
    assert stripe_fake.checkout.sessions[session_id]["status"] == "expired"
    assert (await available(plane, "alice"))["available"] is True
    assert (await sign_up(plane, email="b@example.com")).status == 201


async def test_coming_back_after_paying_keeps_the_name(
    plane: ControlPlane, stripe_fake: StripeFake
) -> None:
    reply = await sign_up(plane)
    session_id = session_of(stripe_fake, reply.body["url"])
    token = status_path(stripe_fake, session_id).rsplit("/", 1)[-1]
    stripe_fake.checkout.complete(session_id, se.CUSTOMER, se.SUBSCRIPTION)  # webhook not yet
    back = await call(plane, "POST", f"/portal/api/status/{token}/cancel")
    assert back.status == 409 and back.body["error"]["code"] == "checkout_paid"
    assert (await available(plane, "alice"))["available"] is False
