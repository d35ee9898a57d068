"""The customer's page and its JSON (docs/portal.md): a signed-in customer sees and
manages the agents their address paid for, and nothing else.

Contract: every route needs a portal session (401 `signed_out`); every change also
its CSRF token and JSON (control/portal/customers.py `changing`); every `{user_id}`
goes through `owned` (404 alike for another customer's agent and none at all).
Every change on one's own agent counts against the customer's address
(control/portal/customers.py `Limits`): restart, rotate and settings
(`container_changes`: each replaces the container), open and billing-portal
(`account_links`: a billing-portal press is a Stripe API call); past it 429
`rate_limited` with Retry-After, before anything is done.
- `GET /portal/account`: the page (without a session: to `/portal/signin`).
- `GET /portal/api/account`: the address, the CSRF token, RETENTION_DAYS and each
  agent's view (`agent_view`: no server, error text, Stripe id or token).
- `GET /portal/api/account/agents/{user_id}`: the view plus the settings: the names
  the tenant profile lets a customer set (`[secrets] names`), each with the label and
  hint its `[secrets.about]` gives (`fields`), and which are set, never a value.
- `POST .../open`: a fresh one-time sign-in link into the agent (control/users/
  signin_links.py; 409 while it has no container).
- `PUT .../settings` `{"NAME": "value" | null}`: the admin API's own secret path
  (control/users/secrets.py: checked, encrypted at rest, never echoed); a change
  restarts the container with it.
- `POST .../restart`: the agent's container replaced, its state kept (409
  `not_running` while nothing runs).
- `POST .../rotate`: a new gateway token (the container restarts with it, and every
  sign-in into the agent ends), every portal session of the address ends (the caller
  gets a new one), and so does the agent's status page (410 from then on: its Open
  made sign-in links).
- `POST .../billing-portal`: a Stripe billing portal session's URL, returning to
  `/portal/account` (409 `no_billing` for an agent Stripe does not bill); with the
  Checkout stand-in on, its stand-in billing page's (control/portal/stand_in.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from aiohttp import web

from control.appkeys import FLEET, SETTINGS, STORE
from control.clock import iso
from control.errors import BadRequest, Conflict
from control.portal import checkouts
from control.portal.billing_portal import billing_portal_url
from control.portal.customer_sessions import COOKIE_NAME, Customer
from control.portal.customers import (
    LIMITS,
    PORTAL_SESSIONS,
    changing,
    customer,
    json_body,
    owned,
    owned_users,
    set_session_cookie,
    take,
)
from control.portal.stand_in import STAND_IN
from control.settings import Settings
from control.users import secrets, signin_links
from control.users.access import user_url

STATIC_DIR = Path(__file__).with_name("static")
_AGENT = "/portal/api/account/agents/{user_id}"

account_routes = web.RouteTableDef()


async def _own_change(request: web.Request, replaces_container: bool) -> tuple[Customer, str]:
    """The session and its own agent for a change, counted against the address."""
    who = await changing(request)
    user_id = await owned(request, who, request.match_info["user_id"])
    limits = request.app[LIMITS]
    if replaces_container:
        limiter, what = limits.container_changes, "restarts and changes for your account"
    else:
        limiter, what = limits.account_links, "requests from your account"
    take(limiter, who.email, time.monotonic(), what)
    return who, user_id


@account_routes.get("/portal/account")
async def account_page(request: web.Request) -> web.Response:
    if await request.app[PORTAL_SESSIONS].get(request.cookies.get(COOKIE_NAME)) is None:
        raise web.HTTPFound("/portal/signin")
    text = (STATIC_DIR / "account.html").read_text(encoding="utf-8")
    return web.Response(text=text, content_type="text/html", charset="utf-8")


async def agent_view(request: web.Request, user_id: str) -> dict[str, Any]:
    fleet = request.app[FLEET]
    row = await fleet.store.fetch_one(
        "SELECT subdomain, plan, state, billing_status, purge_after FROM users WHERE id = ?",
        (user_id,),
    )
    if row is None:  # paid, and the payment not yet applied
        return {"user_id": user_id, "state": "preparing"}
    purge = row["purge_after"]
    return {
        "user_id": user_id,
        "subdomain": row["subdomain"],
        "url": user_url(fleet.settings, row["subdomain"]),
        "plan": row["plan"],
        "state": row["state"],
        "billing_status": row["billing_status"],
        "deleted_after": iso(purge) if purge is not None else None,
    }


@account_routes.get("/portal/api/account")
async def account(request: web.Request) -> web.Response:
    who = await customer(request)
    agents = [await agent_view(request, user_id) for user_id in await owned_users(request, who)]
    settings = request.app[SETTINGS]
    return web.json_response(
        {
            "email": who.email,
            "csrf_token": who.csrf_token,
            "retention_days": settings.retention_days,
            "agents": agents,
        }
    )


@account_routes.get(_AGENT)
async def agent(request: web.Request) -> web.Response:
    user_id = await owned(request, await customer(request), request.match_info["user_id"])
    fleet = request.app[FLEET]
    view = await agent_view(request, user_id)
    names = await secrets.names(fleet.store, fleet.keyring, user_id) if "url" in view else []
    return web.json_response({**view, "settings": {"set": names, **_settable(fleet.settings)}})


@account_routes.post(_AGENT + "/open")
async def open_agent(request: web.Request) -> web.Response:
    _, user_id = await _own_change(request, replaces_container=False)
    fleet = request.app[FLEET]
    link = await signin_links.signin_link(
        fleet.store, fleet.keyring, fleet.settings, user_id, time.time()
    )
    return web.json_response({"url": link.url, "expires_at": iso(link.expires_at)}, status=201)


@account_routes.put(_AGENT + "/settings")
async def put_settings(request: web.Request) -> web.Response:
    _, user_id = await _own_change(request, replaces_container=True)
    fleet = request.app[FLEET]
    names = await fleet.set_secrets(user_id, _changes(await json_body(request)))
    return web.json_response({"set": names, **_settable(fleet.settings)})


def _settable(settings: Settings) -> dict[str, list[Any]]:
    """The names a customer may set, and how the page presents each."""
    profile = settings.tenant_profile
    fields = [{"name": f.name, "label": f.label, "hint": f.hint} for f in profile.secret_fields]
    return {"allowed": list(profile.secret_names), "fields": fields}


def _changes(body: dict[str, Any]) -> dict[str, str | None]:
    for name, value in body.items():
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"{str(name)[:64]}: expected a string or null", code="bad_secret")
    return {str(name): value for name, value in body.items()}


@account_routes.post(_AGENT + "/restart")
async def restart(request: web.Request) -> web.Response:
    _, user_id = await _own_change(request, replaces_container=True)
    await request.app[FLEET].restart_user(user_id)
    return web.json_response(await agent_view(request, user_id))


@account_routes.post(_AGENT + "/rotate")
async def rotate(request: web.Request) -> web.Response:
    who, user_id = await _own_change(request, replaces_container=True)
    await request.app[FLEET].rotate_token(user_id)
    # The status page's Open makes sign-in links too: it ends with the sessions.
    now = time.time()
    await request.app[STORE].write(lambda conn: checkouts.end_status_page(conn, user_id, now))
    sessions = request.app[PORTAL_SESSIONS]
    await sessions.end_all(who.email)
    session_id, fresh = await sessions.create(who.email)
    response = web.json_response({"csrf_token": fresh.csrf_token})
    set_session_cookie(request, response, session_id)
    return response


@account_routes.post(_AGENT + "/billing-portal")
async def billing_portal(request: web.Request) -> web.Response:
    _, user_id = await _own_change(request, replaces_container=False)
    fleet = request.app[FLEET]
    row = await fleet.store.fetch_one(
        "SELECT stripe_customer_id FROM users WHERE id = ?", (user_id,)
    )
    if row is None or not row["stripe_customer_id"]:
        raise Conflict("Stripe does not bill this agent (yet)", code="no_billing")
    return_url = f"{fleet.settings.public_url}/portal/account"
    stand_in = request.app.get(STAND_IN)  # no Stripe here (`make run`): the local page
    if stand_in is not None:
        return web.json_response({"url": stand_in.billing_session(user_id, return_url)}, status=201)
    url = await billing_portal_url(fleet.settings, row["stripe_customer_id"], return_url)
    return web.json_response({"url": url}, status=201)
