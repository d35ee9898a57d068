"""What every returning-customer route shares: the portal's session store, mailer and
rate limits on the app, and the one way a request proves who it is and what it owns.

Contract:
- `install_customers(app)` puts a `PortalSessions`, a `Mailer` (in the local demo
  without SMTP_HOST, the `DemoMailer` that logs the link instead:
  control/portal/demo_mail.py) and `Limits` under this module's AppKeys (never the
  dashboard's) and waits for mail still being sent on cleanup; install.py calls it
  once and adds the sign-in and account routes.
- `customer(request)` is the request's live portal session, else 401 `signed_out`;
  `changing(request)` also requires, for every method that changes something, the
  session's CSRF token in `X-CSRF-Token` (403 `csrf_failed`), and it and
  `json_body` want `Content-Type: application/json` (415, `want_json`, which the
  sign-up's checkout uses too), which a cross-site form cannot send without the
  browser asking first (and nothing here answers CORS).
- `owned(request, customer, user_id)` is the only way to a user: 404 `not_found`,
  alike for another customer's user and for no user at all, unless the customer's
  address paid for it (control/portal/checkouts.py `users_with_email`).
- `set_session_cookie` sets `clawfleet_portal`: HttpOnly, SameSite=Strict, Path=/portal,
  Secure when PUBLIC_URL is https or the request arrived over HTTPS (directly or per
  `X-Forwarded-Proto`).
- `Limits` are token buckets per client address (control/api/edge.py `client_key`,
  the same rule as the admin sign-in's) and per normalised e-mail address; they count
  requests, not outcomes, so a limit says nothing about whether an address is known.
  Each remembers at most 10,000 keys (FailureLimiter's bound). `take` refuses with
  429 `rate_limited`, Retry-After in whole seconds and the wait in plain words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from control.api import edge
from control.api.ratelimit import FailureLimiter, RateLimited
from control.appkeys import SETTINGS, STORE
from control.errors import BadRequest, ClawfleetError, Forbidden, NotFound, Unauthorized
from control.portal import checkouts, demo_mail
from control.portal.customer_sessions import (
    COOKIE_NAME,
    COOKIE_PATH,
    CSRF_HEADER,
    Customer,
    PortalSessions,
)
from control.portal.mail import Mailer

_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


class UnsupportedMediaType(ClawfleetError):
    status = 415
    code = "unsupported_media_type"


@dataclass
class Limits:
    """Per address: 3 links at once, then one every 5 minutes (12 an hour); per client
    address: 10, then one a minute; failed link redemptions: 10, then one every 6 s.
    Availability checks per client address: 60, then one a second (typing a name asks
    once a keystroke pause; a script listing taken names gets 3,600 an hour). A
    customer's actions per address: what replaces the container (restart, rotate, a
    settings change) 5, then one every 2 minutes; what only asks for a link (open, the
    billing portal: a Stripe API call each) 20, then one every 6 s."""

    per_email: FailureLimiter = field(
        default_factory=lambda: FailureLimiter(burst=3, refill_seconds=300.0)
    )
    per_client: FailureLimiter = field(
        default_factory=lambda: FailureLimiter(burst=10, refill_seconds=60.0)
    )
    redeem_failures: FailureLimiter = field(
        default_factory=lambda: FailureLimiter(burst=10, refill_seconds=6.0)
    )
    availability: FailureLimiter = field(
        default_factory=lambda: FailureLimiter(burst=60, refill_seconds=1.0)
    )
    container_changes: FailureLimiter = field(
        default_factory=lambda: FailureLimiter(burst=5, refill_seconds=120.0)
    )
    account_links: FailureLimiter = field(
        default_factory=lambda: FailureLimiter(burst=20, refill_seconds=6.0)
    )


PORTAL_SESSIONS: web.AppKey[PortalSessions] = web.AppKey("portal_sessions")
MAILER: web.AppKey[Mailer] = web.AppKey("portal_mailer")
LIMITS: web.AppKey[Limits] = web.AppKey("portal_limits")


def install_customers(app: web.Application) -> None:
    settings = app[SETTINGS]
    app[PORTAL_SESSIONS] = PortalSessions(lambda: app[STORE], settings.internal_secret)
    app[MAILER] = demo_mail.mailer_for(settings)
    app[LIMITS] = Limits()

    async def close_mailer(app: web.Application) -> None:
        await app[MAILER].close()

    app.on_cleanup.append(close_mailer)


def client_key(request: web.Request) -> str:
    settings = request.app[SETTINGS]
    proxied = edge.behind_proxy(settings.public_url, settings.listen_port)
    return edge.client_key(request.remote, request.headers.get("X-Forwarded-For"), proxied)


def refuse_if_spent(limiter: FailureLimiter, key: str, now: float, what: str) -> None:
    """429 with Retry-After when `key` has nothing left in `limiter`."""
    wait = limiter.retry_after(key, now)
    if wait > 0:
        seconds = max(1, math.ceil(wait))
        raise RateLimited(f"too many {what}: try again {wait_words(seconds)}", retry_after=seconds)


def wait_words(seconds: int) -> str:
    """How long to wait, in the words a customer reads."""
    if seconds < 60:
        return "in a few seconds" if seconds < 10 else f"in {seconds} seconds"
    minutes = math.ceil(seconds / 60)
    return "in a minute" if minutes == 1 else f"in {minutes} minutes"


def take(limiter: FailureLimiter, key: str, now: float, what: str) -> None:
    """Counts one request against `key`, refused (429) once it has none left."""
    refuse_if_spent(limiter, key, now, what)
    limiter.fail(key, now)


async def customer(request: web.Request) -> Customer:
    found = await request.app[PORTAL_SESSIONS].get(request.cookies.get(COOKIE_NAME))
    if found is None:
        raise Unauthorized("sign in at /portal/signin", code="signed_out")
    return found


async def changing(request: web.Request) -> Customer:
    """The session, for a request that changes something: CSRF token and JSON."""
    found = await customer(request)
    if request.method not in _SAFE:
        presented = request.headers.get(CSRF_HEADER)
        if not request.app[PORTAL_SESSIONS].check_csrf(found, presented):
            raise Forbidden(f"changes need the session's {CSRF_HEADER} header", code="csrf_failed")
        want_json(request)
    return found


async def json_body(request: web.Request) -> dict[str, Any]:
    want_json(request)
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("expected a JSON object", code="malformed_body") from None
    if not isinstance(body, dict):
        raise BadRequest("expected a JSON object", code="malformed_body")
    return body


def want_json(request: web.Request) -> None:
    """415 unless the body is declared JSON: a cross-site form can only send
    text/plain, urlencoded or multipart without a CORS preflight, which nothing answers."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType("send Content-Type: application/json")


async def owned(request: web.Request, who: Customer, user_id: str) -> str:
    if user_id not in await owned_users(request, who):
        raise NotFound("no such agent on your account")
    return user_id


async def owned_users(request: web.Request, who: Customer) -> list[str]:
    return await checkouts.users_with_email(request.app[STORE], who.email)


def set_session_cookie(request: web.Request, response: web.StreamResponse, sid: str) -> None:
    response.set_cookie(
        COOKIE_NAME,
        sid,
        path=COOKIE_PATH,
        httponly=True,
        samesite="Strict",
        secure=_secure(request),
    )


def clear_session_cookie(request: web.Request, response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE_NAME, path=COOKIE_PATH, samesite="Strict", secure=_secure(request))


def _secure(request: web.Request) -> bool:
    if request.app[SETTINGS].public_url.startswith("https://") or request.secure:
        return True
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return proto == "https"
