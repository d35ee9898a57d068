"""Helpers for the sign-up tests: the real control plane on 127.0.0.1 with the real
`stripe` library pointed at the fake Stripe API, and the signed webhooks Stripe sends
when a buyer pays on its hosted Checkout page."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from control.appkeys import INBOX
from control.plans import DEFAULT_PLAN, Plan
from control.settings import profiles
from tests import stripe_events as se
from tests.fakes.stripe_api import StripeFake
from tests.fixtures import ControlPlane

PRO = Plan("pro", 2048, 1.0, 1024, 20, (se.PRICE,))
HEALTHY = {
    "state": "running",
    "health": "healthy",
    "image_id": "x",
    "started_at": "",
    "restart_count": 0,
}


def portal_plane(
    control_factory: Callable[..., ControlPlane], stripe_fake: StripeFake, **overrides: Any
) -> ControlPlane:
    stripe_fake.checkout.prices.add(se.PRICE)
    settings: dict[str, Any] = {
        "stripe_webhook_secret": se.WEBHOOK_SECRET,
        "stripe_secret_key": stripe_fake.api_key,
        "stripe_api_base": stripe_fake.url,
        "plans": {"default": DEFAULT_PLAN, "pro": PRO},
        "tenant_profile": profiles.load("openclaw"),
        **overrides,
    }
    return control_factory(**settings)


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


async def call(
    plane: ControlPlane, method: str, path: str, json: Any = None, **kwargs: Any
) -> Reply:
    async with plane.session.request(method, plane.url + path, json=json, **kwargs) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return Reply(r.status, body, dict(r.headers))


async def sign_up(
    plane: ControlPlane, subdomain: str = "alice", email: str = "alice@example.com"
) -> Reply:
    order = {"subdomain": subdomain, "plan": "pro", "email": email}
    return await call(plane, "POST", "/portal/api/checkout", order)


def session_of(stripe_fake: StripeFake, checkout_url: str) -> str:
    """The Checkout Session id a sign-up's hosted page URL is for."""
    session_id = urlsplit(checkout_url).path.rsplit("/", 1)[-1]
    assert session_id in stripe_fake.checkout.sessions
    return session_id


def status_path(stripe_fake: StripeFake, session_id: str) -> str:
    """The status page Stripe sends the buyer to (the success URL's path)."""
    return urlsplit(stripe_fake.checkout.requests[session_id]["success_url"]).path


async def deliver(plane: ControlPlane, event: dict[str, Any]) -> None:
    body = se.encode(event)
    headers = {"Stripe-Signature": se.sign(body), "Content-Type": "application/json"}
    async with plane.session.post(
        plane.url + "/v1/stripe/webhook", data=body, headers=headers
    ) as r:
        assert r.status == 200, await r.text()
    assert plane.app is not None
    async with asyncio.timeout(30):
        await plane.app[INBOX].idle.wait()


async def pay(
    plane: ControlPlane,
    stripe_fake: StripeFake,
    session_id: str,
    subscription_id: str = se.SUBSCRIPTION,
    customer: str = se.CUSTOMER,
) -> None:
    """The buyer pays: the session completes at Stripe, and Stripe's webhooks arrive
    (the checkout, then its subscription, which carries the Checkout's
    subscription_data.metadata)."""
    metadata = stripe_fake.checkout.requests[session_id]["subscription_data"]["metadata"]
    subscription = se.subscription(id_=subscription_id, customer=customer, metadata=metadata)
    stripe_fake.subscriptions[subscription_id] = subscription  # what a re-fetch finds
    session = stripe_fake.checkout.complete(session_id, customer, subscription_id)
    await deliver(plane, se.event("checkout.session.completed", session))
    await deliver(plane, se.event("customer.subscription.created", subscription))
