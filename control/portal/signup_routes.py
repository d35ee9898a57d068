"""The sign-up page and its JSON (docs/portal.md).

Contract:
- `GET /portal/signup`: the page (HTML shell; its script is static/signup.js).
- `GET /portal/api/plans`: the plans a buyer can choose, those with a Stripe price
  (the first of `stripe_price_ids` is the one sold; with the Checkout stand-in on, every
  plan: control/portal/stand_in.py `price_of`), with their display name and price in
  words (control/portal/plan_prices.py) and their sizes, and the base domain the
  agent's address ends in.
- `GET /portal/api/availability?subdomain=`: `{"subdomain", "available", "reason"}`,
  the validation being the admin API's (control/users/names.py `validate_subdomain`:
  a full match of one DNS label, not reserved), then taken by a user or held by an open
  sign-up (control/portal/checkouts.py). Counted per client address
  (control/portal/customers.py `Limits.availability`): past it 429 with Retry-After,
  in the same shape with the wait as `reason` and the usual `error`.
- `POST /portal/api/checkout` `{"subdomain", "plan", "email"}` (`Content-Type:
  application/json` only, else 415, before anything is read: no cross-site form can
  open a Checkout in a visitor's name): validates as above
  (400; e-mail per shared/names.py), refuses a taken name (409 `subdomain_taken`),
  counts against the caller's address (PORTAL_CHECKOUTS_PER_HOUR, 429 `rate_limited`
  with Retry-After, before anything is reserved), reserves the name in a new open
  checkout and opens a Stripe Checkout Session for it (control/portal/stripe_checkout.py);
  201 `{"url"}`: where the browser goes to pay. When Stripe fails the reservation is
  released at once (503 `payment_unavailable`). Once the Checkout is open, with
  PRESTART on, the buyer's agent starts where a server has room now, as a provisional
  user (control/users/prestart.py, at most PRESTART_MAX at once) that only the
  payment's webhook makes a customer; the same transaction as the reservation first
  withdraws the provisional users that are due. An opened Checkout asks the autoscaler for a run
  at once (its buyer counts in the warm headroom: control/capacity/decisions.py). The status page's token goes only into the
  success URL; the cancel URL carries it too, so that coming back releases the name.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec
from aiohttp import web

from control.api import edge
from control.api.bodies import decode_body
from control.api.ratelimit import RateLimited
from control.appkeys import FLEET, SETTINGS, STORE
from control.errors import BadRequest, ClawfleetError
from control.fleet import Fleet
from control.plans import Plan
from control.portal import checkouts, stand_in
from control.portal.customers import LIMITS, client_key, take, want_json
from control.portal.plan_prices import PLAN_PRICES
from control.portal.state import PORTAL
from control.portal.stripe_checkout import Order, Urls
from control.settings import Settings
from control.users import prestart
from control.users.names import validate_subdomain
from control.workers import assignments
from shared.names import email_ok

STATIC_DIR = Path(__file__).with_name("static")

signup_routes = web.RouteTableDef()


class CheckoutRequest(msgspec.Struct, forbid_unknown_fields=True):
    subdomain: str
    plan: str
    email: str


def page(name: str) -> web.Response:
    text = (STATIC_DIR / name).read_text(encoding="utf-8")
    return web.Response(text=text, content_type="text/html", charset="utf-8")


def sold_plans(settings: Settings) -> dict[str, Plan]:
    return {n: p for n, p in settings.plans.items() if stand_in.price_of(settings, p) is not None}


@signup_routes.get("/portal/signup")
async def signup_page(request: web.Request) -> web.Response:
    return page("signup.html")


@signup_routes.get("/portal/api/plans")
async def plans(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    sold = sold_plans(settings)
    cards = await request.app[PLAN_PRICES].cards(
        {name: stand_in.price_of(settings, plan) or "" for name, plan in sold.items()}
    )
    listed = [
        {
            "name": p.name,
            **asdict(cards[p.name]),  # display_name, price (words or None), demo
            "memory_mb": p.memory_mb,
            "cpus": p.cpus,
            "disk_gb": p.disk_gb,
        }
        for p in sold.values()
    ]
    return web.json_response({"plans": listed, "base_domain": settings.base_domain})


@signup_routes.get("/portal/api/availability")
async def availability(request: web.Request) -> web.Response:
    subdomain = request.query.get("subdomain", "")
    try:  # counted before anything is looked up: it lists taken names to anyone
        limits, key = request.app[LIMITS], client_key(request)
        take(limits.availability, key, time.monotonic(), "name checks from your address")
    except RateLimited as exc:  # in the page's own shape, so it shows the reason
        refused = {"subdomain": subdomain, "available": False, "reason": exc.message}
        error = {"code": exc.code, "message": exc.message}
        return web.json_response({**refused, "error": error}, status=429, headers=exc.headers)
    try:
        validate_subdomain(subdomain)
    except BadRequest as exc:
        return _available(subdomain, False, exc.message.removeprefix("subdomain: "))
    now = request.app[PORTAL].clock()
    taken = await checkouts.subdomain_taken(request.app[STORE], subdomain, now)
    return _available(subdomain, not taken, "this name is taken" if taken else None)


def _available(subdomain: str, available: bool, reason: str | None) -> web.Response:
    return web.json_response({"subdomain": subdomain, "available": available, "reason": reason})


@signup_routes.post("/portal/api/checkout")
async def create_checkout(request: web.Request) -> web.Response:
    settings, portal, store = request.app[SETTINGS], request.app[PORTAL], request.app[STORE]
    want_json(request)  # another site's text/plain form must not reserve names (CSRF)
    wanted = decode_body(await request.read(), CheckoutRequest)
    plan = _checked(wanted, settings)
    now = portal.clock()
    _take_attempt(request)
    token = secrets.token_urlsafe(32)
    session_expiry = int(now) + settings.portal_checkout_minutes * 60
    row: dict[str, Any] = {
        "id": "co-" + secrets.token_hex(12),
        "token_hash": checkouts.token_hash(token),
        "user_id": f"{wanted.subdomain[:48]}-{secrets.token_hex(4)}",
        "subdomain": wanted.subdomain,
        "plan": plan.name,
        "email": wanted.email,
        "expires_at": session_expiry + checkouts.HOLD_GRACE,
    }
    await _reserve(request.app[FLEET], row, now)
    order = Order(
        row["id"],
        row["user_id"],
        wanted.subdomain,
        stand_in.price_of(settings, plan) or "",  # a sold plan has its price
        wanted.email,
        session_expiry,
    )
    base = settings.public_url.rstrip("/")
    urls = Urls(f"{base}/portal/status/{token}", f"{base}/portal/signup?back={token}")
    try:
        session = await portal.checkout.create(order, urls)
    except ClawfleetError:
        await store.write(lambda conn: checkouts.release(conn, row["id"], portal.clock()))
        raise
    await _attach(request.app[FLEET], row, session.id, now)
    # Demand about to arrive (CHECKOUT_HEADROOM_MINUTES): the autoscaler counts it now,
    # not at its next tick, so the buyer's server is booting while they pay.
    request.app[FLEET].on_pending()
    return web.json_response({"url": session.url}, status=201)


async def _reserve(fleet: Fleet, row: dict[str, Any], now: float) -> None:
    """The reservation, after withdrawing the provisional users that are due: a name
    whose sign-up was released is free again at once, not at the next sweep."""
    ttl = fleet.settings.prestart_ttl_minutes * 60.0

    async def change(conn: aiosqlite.Connection) -> list[str]:
        gone = await prestart.withdraw_due(conn, now, ttl)
        await checkouts.reserve(conn, row, now)
        return gone

    fleet.board.notify(*await assignments.commit(fleet.store, change, lambda s: s))


async def _attach(fleet: Fleet, row: dict[str, Any], session_id: str, now: float) -> None:
    """The Checkout Session is open: its buyer's agent starts now, where there is room
    (control/users/prestart.py), so that it is warm when they have paid."""
    settings = fleet.settings
    token = fleet.keyring.encrypt(fleet.keyring.new_secret())

    async def change(conn: aiosqlite.Connection) -> str | None:
        await checkouts.attach_session(conn, row["id"], session_id)
        live = await prestart.live_count(conn)
        volumes = fleet.reserve.volume_per_user
        if not prestart.may_start(settings.prestart, live, settings.prestart_max, volumes):
            return None
        index, needs = fleet.room_index, fleet.needs
        return await prestart.start(conn, row, fleet.plans, index, needs, lambda: token, now)

    server = await assignments.commit(fleet.store, change, lambda s: [s])
    if server is not None:
        fleet.board.notify(server)


def _checked(wanted: CheckoutRequest, settings: Settings) -> Plan:
    validate_subdomain(wanted.subdomain)
    if not email_ok(wanted.email):
        raise BadRequest("email: enter an e-mail address like name@example.com")
    plan = sold_plans(settings).get(wanted.plan)
    if plan is None:
        raise BadRequest(f"plan: choose one of {', '.join(sorted(sold_plans(settings)))}")
    return plan


def _take_attempt(request: web.Request) -> None:
    """One Checkout opened counts against the caller's address; refused once spent."""
    portal = request.app[PORTAL]
    key = edge.client_key(
        request.remote, request.headers.get("X-Forwarded-For"), portal.behind_proxy
    )
    now = portal.clock()
    wait = portal.checkout_limiter.retry_after(key, now)
    if wait > 0:
        raise RateLimited(
            "too many sign-ups from your address: try again after Retry-After seconds",
            retry_after=max(1, math.ceil(wait)),
        )
    portal.checkout_limiter.fail(key, now)
