"""A local stand-in for Stripe's hosted Checkout page, for the `make run` demo and tests
that have no Stripe account (docs/portal.md).

Contract:
- `enabled(settings)`: CHECKOUT_STAND_IN is `auto`, no STRIPE_SECRET_KEY is set, Stripe
  is in test mode and a webhook signing secret exists. Never with a key or in live
  mode: a real deployment can never get a free "Pay" button by mistake.
- `price_of(settings, plan)`: what sign-up sells a plan at; with the stand-in on, plans
  without a Stripe price are sold too, at the synthetic `price_clawfleet_<plan>`.
- `StandInCheckout` is a `CheckoutProvider` (control/portal/stripe_checkout.py): `create`
  remembers the order and answers a session whose URL is this control plane's page
  `/portal/stand-in/checkout/{session id}` instead of checkout.stripe.com; `expire`
  ends it unless it is paid or being paid (then False, as Stripe's would say). Sessions live in memory only: after a restart the buyer signs up again, as
  with an expired Checkout.
- That page (clearly marked as a stand-in, no card asked for) reads its order from
  `GET /portal/api/stand-in/checkout/{id}`; its "Pay" button is
  `POST /portal/api/stand-in/checkout/{id}/pay` (JSON only, which a cross-site form
  cannot send without a preflight that nothing answers), which sends the
  `checkout.session.completed` and `customer.subscription.created` events Stripe would,
  built and signed by control/billing/simulated.py exactly as `clawfleet
  simulate-payment` does, over HTTP to `PUBLIC_URL/v1/stripe/webhook`, where the
  webhook verifies them like any delivery; nothing bypasses it. It answers
  `{"redirect": success_url}` (Stripe's `{CHECKOUT_SESSION_ID}` filled in). A session
  is paid once (409 `checkout_paid`); an expired one is 409 `checkout_expired`; an
  unknown one 404. A webhook that refuses is 503 `payment_unavailable`.
- The billing portal too (no Stripe, no billing portal): `billing_session(user_id,
  return_url)` is the URL of `/portal/stand-in/billing/{id}` that the customer's page
  (control/portal/account_routes.py) opens instead of Stripe's; its "Cancel
  subscription" is `POST /portal/api/stand-in/billing/{id}/cancel`, which sends the
  `customer.subscription.deleted` event Stripe sends for a cancellation at once
  (control/billing/simulated.py), signed the same way, for the user's own customer and
  subscription, then answers `{"redirect": return_url}`.
- With the stand-in off, none of its routes exist.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from control.appkeys import SETTINGS, STORE
from control.billing.rules import SYNTHETIC_PRICE_PREFIX, plan_for_price
from control.billing.simulated import (
    Purchase,
    cancellation_event,
    purchase_events,
    signed_delivery,
)
from control.db.store import Row
from control.errors import BadRequest, Conflict, NotFound
from control.plans import Plan
from control.portal.stripe_checkout import CheckoutFailed, Order, Session, Urls
from control.settings import Settings

PAGE = Path(__file__).with_name("static") / "stand_in.html"
BILLING_PAGE = Path(__file__).with_name("static") / "stand_in_billing.html"
WEBHOOK_TIMEOUT = 15.0


class CheckoutPaid(Conflict):
    code = "checkout_paid"


class CheckoutExpired(Conflict):
    code = "checkout_expired"


def enabled(settings: Settings) -> bool:
    return (
        settings.checkout_stand_in == "auto"
        and not settings.stripe_secret_key
        and not settings.stripe_livemode
        and bool(settings.stripe_webhook_secret)
    )


def price_of(settings: Settings, plan: Plan) -> str | None:
    """The price a plan is sold at: its first Stripe price. With the stand-in on, a plan
    without one sells at `price_clawfleet_<plan>`, the synthetic price the webhook maps
    back to the plan (control/billing/rules.py), as `clawfleet simulate-payment` does;
    otherwise such a plan is not sold (None)."""
    if plan.stripe_price_ids:
        return plan.stripe_price_ids[0]
    return f"{SYNTHETIC_PRICE_PREFIX}{plan.name}" if enabled(settings) else None


def plan_of_price(settings: Settings, price_id: str) -> str:
    """The plan a price buys (as the webhook will decide), else the default plan's name."""
    plan = plan_for_price(settings.plans, price_id)
    return plan.name if plan is not None else "default"


@dataclass
class StandInSession:
    order: Order
    urls: Urls
    state: str = "open"  # open | paying | paid | expired


@dataclass(frozen=True)
class BillingSession:
    user_id: str
    return_url: str


class StandInCheckout:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.sessions: dict[str, StandInSession] = {}
        self.billing: dict[str, BillingSession] = {}

    async def create(self, order: Order, urls: Urls) -> Session:
        session_id = f"cs_test_standin_{secrets.token_urlsafe(24)}"
        self.sessions[session_id] = StandInSession(order, urls)
        base = self.settings.public_url.rstrip("/")
        return Session(id=session_id, url=f"{base}/portal/stand-in/checkout/{session_id}")

    async def expire(self, session_id: str) -> bool:
        """Ends an open session; False when it is paid or being paid (its name stays
        reserved). One this process never made cannot be paid here: expired."""
        session = self.sessions.get(session_id)
        if session is None:
            return True
        if session.state == "open":
            session.state = "expired"
        return session.state == "expired"

    def open_session(self, session_id: str) -> StandInSession:
        """The session a buyer may still pay, else the error that says why not."""
        session = self.sessions.get(session_id)
        if session is None:
            raise NotFound("no such checkout: start again from the sign-up page")
        if session.state in ("paying", "paid"):
            raise CheckoutPaid("this checkout is already paid")
        if session.state == "expired" or self.clock() >= session.order.expires_at:
            raise CheckoutExpired("this checkout has expired: start again from the sign-up page")
        return session

    async def pay(self, session_id: str) -> str:
        """Sends what Stripe sends for a paid session; the success URL to go to."""
        session = self.open_session(session_id)
        session.state = "paying"  # before any await: a second click finds it taken
        order = session.order
        purchase = Purchase(
            user_id=order.user_id,
            subdomain=order.subdomain,
            plan=plan_of_price(self.settings, order.price_id),
            price_id=order.price_id,
            email=order.email,
            session_id=session_id,
            success_url=session.urls.success.replace("{CHECKOUT_SESSION_ID}", session_id),
            cancel_url=session.urls.cancel,
        )
        try:
            await self._deliver(purchase_events(purchase, int(self.clock())))
        except BaseException:
            session.state = "open"  # nothing was paid for sure: the buyer may try again
            raise
        session.state = "paid"
        return purchase.success_url

    def billing_session(self, user_id: str, return_url: str) -> str:
        """The stand-in billing portal's URL for one customer's agent."""
        session_id = f"bps_test_standin_{secrets.token_urlsafe(24)}"
        self.billing[session_id] = BillingSession(user_id, return_url)
        return f"{self.settings.public_url.rstrip('/')}/portal/stand-in/billing/{session_id}"

    def billing_of(self, session_id: str) -> BillingSession:
        session = self.billing.get(session_id)
        if session is None:
            raise NotFound("no such billing session: open it again from your account")
        return session

    async def cancel(self, session_id: str, user: Row) -> str:
        """Sends what Stripe sends when the customer cancels at once; the return URL."""
        session = self.billing_of(session_id)
        if not user["stripe_subscription_id"]:
            raise Conflict("this agent has no subscription to cancel", code="no_billing")
        plan = self.settings.plans.get(user["plan"]) or self.settings.plans["default"]
        price = price_of(self.settings, plan) or f"{SYNTHETIC_PRICE_PREFIX}{plan.name}"
        purchase = Purchase(session.user_id, user["subdomain"], plan.name, price, "")
        now = int(self.clock())
        customer, subscription = user["stripe_customer_id"], user["stripe_subscription_id"]
        await self._deliver([cancellation_event(purchase, customer, subscription, now)])
        return session.return_url

    async def _deliver(self, events: list[dict[str, Any]]) -> None:
        url = f"{self.settings.public_url.rstrip('/')}/v1/stripe/webhook"
        timeout = aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for event in events:
                body, headers = signed_delivery(
                    self.settings.stripe_webhook_secret, event, int(self.clock())
                )
                headers["User-Agent"] = "clawfleet-checkout-stand-in (Stripe/1.0 compatible)"
                try:
                    async with http.post(url, data=body, headers=headers) as reply:
                        if reply.status >= 300:
                            raise CheckoutFailed(
                                f"the webhook refused the payment ({reply.status})",
                                upstream_status=reply.status,
                            )
                except (aiohttp.ClientError, TimeoutError) as exc:
                    raise CheckoutFailed("the webhook could not be reached") from exc


STAND_IN = web.AppKey("portal_stand_in", StandInCheckout)
stand_in_routes = web.RouteTableDef()


def install_stand_in(app: web.Application) -> StandInCheckout | None:
    """Adds the stand-in's page and JSON when it is on; the provider to use, or None."""
    if not enabled(app[SETTINGS]):
        return None
    stand_in = StandInCheckout(app[SETTINGS])
    app[STAND_IN] = stand_in
    app.add_routes(stand_in_routes)
    return stand_in


@stand_in_routes.get("/portal/stand-in/checkout/{session_id}")
async def stand_in_page(request: web.Request) -> web.Response:
    # The shell only: its script asks for the order and shows why it cannot be paid.
    return web.Response(text=PAGE.read_text(encoding="utf-8"), content_type="text/html")


@stand_in_routes.get("/portal/api/stand-in/checkout/{session_id}")
async def stand_in_order(request: web.Request) -> web.Response:
    stand_in = request.app[STAND_IN]
    session = stand_in.open_session(request.match_info["session_id"])
    order = session.order
    return web.json_response(
        {
            "subdomain": order.subdomain,
            "email": order.email,
            "plan": plan_of_price(stand_in.settings, order.price_id),
            "price_id": order.price_id,
            "expires_at": order.expires_at,
            "cancel_url": session.urls.cancel,
        }
    )


@stand_in_routes.post("/portal/api/stand-in/checkout/{session_id}/pay")
async def stand_in_pay(request: web.Request) -> web.Response:
    if request.content_type != "application/json":
        raise BadRequest("send the payment as JSON")
    redirect = await request.app[STAND_IN].pay(request.match_info["session_id"])
    return web.json_response({"redirect": redirect})


@stand_in_routes.get("/portal/stand-in/billing/{session_id}")
async def stand_in_billing_page(request: web.Request) -> web.Response:
    return web.Response(text=BILLING_PAGE.read_text(encoding="utf-8"), content_type="text/html")


@stand_in_routes.get("/portal/api/stand-in/billing/{session_id}")
async def stand_in_billing(request: web.Request) -> web.Response:
    session = request.app[STAND_IN].billing_of(request.match_info["session_id"])
    user = await _user(request, session.user_id)
    return web.json_response(
        {"subdomain": user["subdomain"], "plan": user["plan"], "return_url": session.return_url}
    )


@stand_in_routes.post("/portal/api/stand-in/billing/{session_id}/cancel")
async def stand_in_cancel(request: web.Request) -> web.Response:
    if request.content_type != "application/json":
        raise BadRequest("send the cancellation as JSON")
    stand_in = request.app[STAND_IN]
    session = stand_in.billing_of(request.match_info["session_id"])
    user = await _user(request, session.user_id)
    redirect = await stand_in.cancel(request.match_info["session_id"], user)
    return web.json_response({"redirect": redirect})


async def _user(request: web.Request, user_id: str) -> Row:
    user = await request.app[STORE].fetch_one(
        "SELECT subdomain, plan, stripe_customer_id, stripe_subscription_id FROM users "
        "WHERE id = ?",
        (user_id,),
    )
    if user is None:
        raise NotFound("this agent does not exist any more")
    return user
