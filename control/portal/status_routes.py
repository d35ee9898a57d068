"""The status page a buyer lands on after paying (Stripe's success URL) and its JSON
(docs/portal.md).

Contract:
- Everything here is keyed by the status page's secret token (the path; only its
  sha256 is stored) and shows only that checkout's own progress: no user id, no
  server, nobody else's data. An unknown token is 404; one older than
  PORTAL_STATUS_HOURS, or whose agent's access was rotated since (its Open would keep
  making sign-in links), is 410 `link_expired` (the customer signs in by e-mail then).
- `GET /portal/status/{token}`: the page (static/status.js polls the JSON below), the
  same whether it is opened for the first time or again later.
- `GET /portal/api/status/{token}`: `{"step", "steps", "message", "estimate_seconds",
  "estimate_basis", "subdomain", "url", "poll_seconds"}` as control/portal/progress.py
  decides from the user Stripe's webhook created, its state, and the servers being
  created (the typical start-up being the median of the last ones measured, creation
  to registration, or PORTAL_BOOT_SECONDS); `url` only once ready. Seeing the user
  marks the checkout paid.
- `POST /portal/api/status/{token}/open`: 201 `{"url"}`, a fresh one-time sign-in link
  into the agent (control/users/signin_links.py), or its plain address when the
  tenant profile has no sign-in gate; 409 `not_running` until it runs (ready). It counts
  against the buyer's address as the customer page's Open does (`account_links`: 429).
- `POST /portal/api/status/{token}/cancel`: the buyer came back from Checkout without
  paying (the cancel URL): the Checkout Session is expired at Stripe and the name
  released (unless Stripe says the session was completed after all: 409
  `checkout_paid`, the name stays reserved for its webhook); answers the sign-up's choices `{"subdomain", "plan", "email"}` so the form
  can be filled in again. A checkout already paid stays as it is (409 `checkout_paid`).
"""

from __future__ import annotations

import time
from dataclasses import asdict

from aiohttp import web

from control.appkeys import FLEET, SETTINGS, STORE
from control.billing.claims import AWAITING
from control.db.store import Row, Store
from control.errors import ClawfleetError, Conflict, NotFound
from control.portal import checkouts
from control.portal.customers import LIMITS, take
from control.portal.progress import STEPS, Facts, progress, typical_boot
from control.portal.signup_routes import page
from control.portal.state import PORTAL
from control.users.access import user_url
from control.users.prestart import provisional_sql
from control.users.signin_links import signin_link

POLL_SECONDS = 2.0
# While the container is coming up, the answer is due any moment: the page asks again
# sooner, so the customer's button appears within half a second of the agent being up.
STARTING_POLL_SECONDS = 0.5
BOOT_SAMPLES = 10
STATUS_KEY = "{token:[A-Za-z0-9_-]{43}}"  # secrets.token_urlsafe(32)

status_routes = web.RouteTableDef()


class LinkExpired(ClawfleetError):
    status = 410
    code = "link_expired"


@status_routes.get(f"/portal/status/{STATUS_KEY}")
async def status_page(request: web.Request) -> web.Response:
    return page("status.html")


async def _checkout(request: web.Request) -> Row:
    store, portal = request.app[STORE], request.app[PORTAL]
    row = await checkouts.by_token(store, request.match_info["token"])
    if row is None:
        raise NotFound("this status page does not exist: check the link")
    hours = request.app[SETTINGS].portal_status_hours
    if row["state"] == "ended":
        raise LinkExpired(
            "this status page was closed when access to the agent was renewed: "
            "sign in with your e-mail address instead"
        )
    if row["created_at"] + hours * 3600 <= portal.clock():
        raise LinkExpired("this status page has expired: sign in with your e-mail address instead")
    return row


@status_routes.get(f"/portal/api/status/{STATUS_KEY}")
async def status(request: web.Request) -> web.Response:
    checkout = await _checkout(request)
    store, settings = request.app[STORE], request.app[SETTINGS]
    now = request.app[PORTAL].clock()
    user = await store.fetch_one(  # a provisional user is nobody's until paid (prestart.py)
        f"SELECT state, error, subdomain FROM users WHERE id = ? AND NOT {provisional_sql()}",
        (checkout["user_id"],),
    )
    if user is not None and checkout["state"] == "open":
        await store.write(lambda conn: checkouts.mark_paid(conn, checkout["id"], now))
    facts = Facts(
        checkout_state=_checkout_state(checkout, now),
        user_state=None if user is None else user["state"],
        awaiting_subscription=user is not None and user["error"] == AWAITING,
        booting_since=await _booting_since(store),
        boot=typical_boot(await _boot_samples(store), settings.portal_boot_seconds),
        now=now,
        support_email=settings.support_email,
    )
    shown = progress(facts)
    subdomain = checkout["subdomain"] if user is None else user["subdomain"]
    ready = shown.step == "ready"
    return web.json_response(
        {
            **asdict(shown),
            "steps": list(STEPS),
            "subdomain": subdomain,
            "url": user_url(settings, subdomain) if ready else None,
            "poll_seconds": STARTING_POLL_SECONDS if shown.step == "starting" else POLL_SECONDS,
        }
    )


def _checkout_state(checkout: Row, now: float) -> str:
    if checkout["state"] == "open" and checkout["expires_at"] <= now:
        return "expired"
    return str(checkout["state"])


async def _booting_since(store: Store) -> float | None:
    """When the oldest server the autoscaler created, not started yet, was created."""
    row = await store.fetch_one(
        "SELECT MIN(created_at) AS since FROM servers "
        "WHERE status = 'provisioning' AND origin = 'provider'"
    )
    return None if row is None or row["since"] is None else float(row["since"])


async def _boot_samples(store: Store) -> list[float]:
    """Creation to first registration of the last servers the autoscaler created."""
    rows = await store.fetch_all(
        "SELECT registered_at - created_at AS took FROM servers "
        "WHERE origin = 'provider' AND registered_at IS NOT NULL "
        "ORDER BY created_at DESC LIMIT ?",
        (BOOT_SAMPLES,),
    )
    return [float(row["took"]) for row in rows]


@status_routes.post(f"/portal/api/status/{STATUS_KEY}/open")
async def open_agent(request: web.Request) -> web.Response:
    checkout = await _checkout(request)
    limit = request.app[LIMITS].account_links
    take(limit, checkout["email"].lower(), time.monotonic(), "requests for your agent")
    fleet, settings = request.app[FLEET], request.app[SETTINGS]
    user_id = checkout["user_id"]
    row = await fleet.store.fetch_one(
        f"SELECT state, subdomain FROM users WHERE id = ? AND NOT {provisional_sql()}", (user_id,)
    )
    if row is None or row["state"] != "running":  # the button shows once it is ready
        raise Conflict("your agent is not ready yet", code="not_running")
    try:
        link = await signin_link(fleet.store, fleet.keyring, settings, user_id, time.time())
    except Conflict as exc:
        if exc.code != "signin_off":
            raise
        return web.json_response({"url": user_url(settings, row["subdomain"])}, status=201)
    return web.json_response({"url": link.url}, status=201)


@status_routes.post(f"/portal/api/status/{STATUS_KEY}/cancel")
async def cancel(request: web.Request) -> web.Response:
    checkout = await _checkout(request)
    store, portal = request.app[STORE], request.app[PORTAL]
    session_id = checkout["stripe_session_id"]
    if checkout["state"] == "open" and session_id and not await portal.checkout.expire(session_id):
        raise Conflict("this sign-up is already paid", code="checkout_paid")
    released = await store.write(
        lambda conn: checkouts.release(conn, checkout["id"], portal.clock())
    )
    if not released and checkout["state"] != "expired":
        raise Conflict("this sign-up is already paid", code="checkout_paid")
    choices = {k: checkout[k] for k in ("subdomain", "plan", "email")}
    return web.json_response(choices)
