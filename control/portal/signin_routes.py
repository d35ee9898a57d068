"""Returning customers sign in with an e-mailed one-time link (docs/portal.md).

Contract:
- `GET /portal/signin`: the page asking for the address (a signed-in customer goes
  to `/portal/account`). `GET /portal/signin/link`: the page a mailed link opens; the
  token is in the URL's fragment, which no server, log or Referer sees, and the page
  redeems it only when the customer presses its button (a mail scanner that fetches
  links does not spend it).
- `POST /portal/api/signin` `{"email": "..."}` answers 202 with the same words whether
  or not the address paid for an agent; only when it did, a link (`LINK_SECONDS`,
  single use, stored hashed: control/portal/login_links.py) is mailed, in the
  background so the answer takes as long either way. Per client address and per
  address (`Limits`), counted before the lookup: 429 with Retry-After. 400 for no
  address; 503 `mail_off` when SMTP_HOST is empty, except in the local demo
  (control/portal/demo_mail.py: the link goes to the log, and the answer says so).
- `POST /portal/api/signin/redeem` `{"token": "..."}` spends a live link: a new session
  (any session the browser had ends) and its cookie; 400 `link_invalid` for an
  unknown, used or expired link, alike; failures count per client address (429).
- `POST /portal/api/signout` (CSRF) ends the session and clears the cookie.
"""

from __future__ import annotations

import time
from pathlib import Path

import aiosqlite
from aiohttp import web

from control.appkeys import SETTINGS, STORE
from control.errors import BadRequest, ServiceUnavailable
from control.portal import checkouts, demo_mail, login_links
from control.portal.customer_sessions import COOKIE_NAME
from control.portal.customers import (
    LIMITS,
    MAILER,
    PORTAL_SESSIONS,
    changing,
    clear_session_cookie,
    client_key,
    json_body,
    refuse_if_spent,
    set_session_cookie,
    take,
)
from control.portal.mail import signin_message

STATIC_DIR = Path(__file__).with_name("static")
SENT = (
    "If that address has an agent with us, a sign-in link is on its way. "
    f"It works once, for {login_links.LINK_MINUTES} minutes."
)

signin_routes = web.RouteTableDef()


def _html(name: str) -> web.Response:
    text = (STATIC_DIR / name).read_text(encoding="utf-8")
    return web.Response(text=text, content_type="text/html", charset="utf-8")


@signin_routes.get("/portal/signin")
async def signin_page(request: web.Request) -> web.Response:
    if await request.app[PORTAL_SESSIONS].get(request.cookies.get(COOKIE_NAME)) is not None:
        raise web.HTTPFound("/portal/account")
    return _html("signin.html")


@signin_routes.get("/portal/signin/link")
async def link_page(request: web.Request) -> web.Response:
    return _html("signin-link.html")


@signin_routes.post("/portal/api/signin")
async def ask_for_link(request: web.Request) -> web.Response:
    mailer = request.app[MAILER]
    if not mailer.enabled:
        raise ServiceUnavailable("sign-in by e-mail is not set up here", code="mail_off")
    raw = (await json_body(request)).get("email")
    email = login_links.normal_email(raw) if isinstance(raw, str) else None
    if email is None:
        raise BadRequest("email: expected an e-mail address", code="bad_email")
    limits, now = request.app[LIMITS], time.monotonic()
    take(limits.per_client, client_key(request), now, "sign-in requests from your address")
    take(limits.per_email, email, now, "sign-in links for this address")

    async def issue(conn: aiosqlite.Connection) -> str | None:
        if not await checkouts.users_with_email(conn, email):
            return None
        return await login_links.issue(conn, email, time.time())

    token = await request.app[STORE].write(issue)
    if token is not None:
        url = f"{request.app[SETTINGS].public_url}/portal/signin/link#{token}"
        # The mailer's settings: the demo's has a From address where MAIL_FROM is unset.
        message = signin_message(mailer.settings, email, url, login_links.LINK_MINUTES)
        mailer.send_later(message)
    words = demo_mail.SENT if isinstance(mailer, demo_mail.DemoMailer) else SENT
    return web.json_response({"message": words}, status=202)


@signin_routes.post("/portal/api/signin/redeem")
async def redeem(request: web.Request) -> web.Response:
    limits, key = request.app[LIMITS], client_key(request)
    refuse_if_spent(limits.redeem_failures, key, time.monotonic(), "failed sign-in links")
    token = (await json_body(request)).get("token")
    email = None
    if isinstance(token, str) and 0 < len(token) <= 200:
        email = await request.app[STORE].write(
            lambda conn: login_links.redeem(conn, token, time.time())
        )
    if email is None:
        limits.redeem_failures.fail(key, time.monotonic())
        raise BadRequest(
            "this sign-in link has expired or was already used: ask for a new one",
            code="link_invalid",
        )
    sessions = request.app[PORTAL_SESSIONS]
    await sessions.end(request.cookies.get(COOKIE_NAME))  # never keep an id from before
    session_id, _ = await sessions.create(email)
    response = web.json_response({"next": "/portal/account"})
    set_session_cookie(request, response, session_id)
    return response


@signin_routes.post("/portal/api/signout")
async def signout(request: web.Request) -> web.Response:
    await changing(request)
    await request.app[PORTAL_SESSIONS].end(request.cookies.get(COOKIE_NAME))
    response = web.Response(status=204)
    clear_session_cookie(request, response)
    return response
