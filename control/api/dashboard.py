"""The operators' dashboard: sign-in, pages and static assets, served by the control plane.

Contract:
- `install_dashboard(app)` adds `dashboard_routes` and the app's session store
  (control/api/sessions.py, rows in the fleet's database) and makes every `/dashboard*`
  response carry the security headers below. Call it once from `create_app`, after
  the auth guard (control/api/ratelimit.py).
- `GET /` redirects to `/dashboard`. The pages (`/dashboard`, `/dashboard/servers/{id}`,
  `/dashboard/users`, `/dashboard/events`) all serve one HTML shell whose script fetches
  the admin API (`/v1/*`) with the session cookie; without a live session they
  redirect to `/dashboard/login?next=<page>`.
- `POST /dashboard/login` (form field `token`) compares the admin token in constant
  time; on a match it starts a session and sets the cookie (HttpOnly, SameSite=Strict,
  Path=/, Secure when PUBLIC_URL is https or the request arrived over HTTPS, directly
  or per `X-Forwarded-Proto` / `Forwarded: proto=https`); otherwise 401 and the form
  again. A wrong token counts against the caller's address; an address that failed
  too often gets 429, `Retry-After` and the form with that message, before its token
  is even compared.
- `?next=` returns only to a dashboard page (full match: no scheme, host, dot
  segment, control character or the sign-in page itself), else to `/dashboard`. `POST /dashboard/logout` needs
  the session's CSRF token (form field `csrf_token` or the `X-CSRF-Token` header), ends
  the session and clears the cookie.
- `GET /dashboard/api/session` (session only, else 401) gives the page its CSRF token,
  the users' base domain and the poll interval.
- Assets are files under control/api/dashboard_static/, served at /dashboard/static/
  without a session (they hold no data). No inline script or style anywhere: the CSP
  is `default-src 'self'`, framing is denied.
- Tokens, session ids and CSRF tokens are never logged.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from control.api.ratelimit import RateLimited
from control.api.sessions import (
    COOKIE_NAME,
    CSRF_HEADER,
    check_admin_token,
    check_csrf,
    install_sessions,
    session_of,
)
from control.appkeys import AUTH_GUARD, SESSIONS, SETTINGS, STORE
from control.errors import Forbidden, Unauthorized

STATIC_DIR = Path(__file__).with_name("dashboard_static")
POLL_SECONDS = 3.0
CSP = (
    "default-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'; object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
LOGIN_FAILED = '<p class="error" role="alert">That is not the admin token.</p>'
LOGIN_LIMITED = (
    '<p class="error" role="alert">Too many failed sign-ins from your address: '
    "try again in {seconds} seconds.</p>"
)
# Where sign-in may return to: a dashboard page; no dot segments, no scheme, no host.
_NEXT = re.compile(r"/dashboard(/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)*/?")

dashboard_routes = web.RouteTableDef()


def install_dashboard(app: web.Application) -> None:
    install_sessions(app, lambda: app[STORE], app[SETTINGS].internal_secret)
    app.add_routes(dashboard_routes)
    app.on_response_prepare.append(_security_headers)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path == "/" or request.path.startswith("/dashboard"):
        response.headers.update(SECURITY_HEADERS)
        if not request.path.startswith("/dashboard/static/"):
            response.headers["Cache-Control"] = "no-store"


def _page(name: str) -> str:
    return (STATIC_DIR / name).read_text(encoding="utf-8")


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _redirect(location: str, status: int = 302) -> web.Response:
    return web.Response(status=status, headers={"Location": location})


def _login_redirect(request: web.Request) -> web.Response:
    return _redirect("/dashboard/login?next=" + quote(request.path, safe="/"))


def _next_page(request: web.Request) -> str:
    wanted = request.query.get("next", "")
    return wanted if _NEXT.fullmatch(wanted) and "/dashboard/login" not in wanted else "/dashboard"


def _secure(request: web.Request) -> bool:
    if request.app[SETTINGS].public_url.startswith("https://") or request.secure:
        return True
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return proto == "https" or _forwarded_proto(request.headers.get("Forwarded", "")) == "https"


def _forwarded_proto(header: str) -> str:
    """`proto` of the first element of an RFC 7239 `Forwarded` header (lower case)."""
    for pair in header.split(",")[0].split(";"):
        name, _, value = pair.partition("=")
        if name.strip().lower() == "proto":
            return value.strip().strip('"').lower()
    return ""


@dashboard_routes.get("/")
async def root(request: web.Request) -> web.Response:
    return _redirect("/dashboard")


@dashboard_routes.get("/dashboard")
@dashboard_routes.get("/dashboard/")
@dashboard_routes.get("/dashboard/users")
@dashboard_routes.get("/dashboard/events")
@dashboard_routes.get("/dashboard/servers/{server_id}")
async def page(request: web.Request) -> web.Response:
    if await session_of(request) is None:
        return _login_redirect(request)
    return _html(_page("index.html"))


@dashboard_routes.get("/dashboard/login")
async def login_form(request: web.Request) -> web.Response:
    if await session_of(request) is not None:
        return _redirect(_next_page(request))
    return _html(_page("login.html"))


@dashboard_routes.post("/dashboard/login")
async def login(request: web.Request) -> web.Response:
    guard = request.app[AUTH_GUARD]
    try:
        guard.refuse_if_blocked(request, "dashboard sign-in")
    except RateLimited as exc:
        error = LOGIN_LIMITED.format(seconds=exc.retry_after)
        response = _html(_page("login.html").replace("<!--error-->", error), status=exc.status)
        response.headers.update(exc.headers)
        return response
    form = await request.post()
    presented = form.get("token")
    expected = request.app[SETTINGS].admin_token
    if not isinstance(presented, str) or not check_admin_token(presented.strip(), expected):
        await guard.failed(request, "dashboard sign-in")
        return _html(_page("login.html").replace("<!--error-->", LOGIN_FAILED), status=401)
    store = request.app[SESSIONS]
    await store.end(request.cookies.get(COOKIE_NAME))  # never keep an id from before sign-in
    session_id, _session = await store.create()
    response = _redirect(_next_page(request), status=303)
    response.set_cookie(
        COOKIE_NAME,
        session_id,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=_secure(request),
    )
    return response


@dashboard_routes.post("/dashboard/logout")
async def logout(request: web.Request) -> web.Response:
    session = await session_of(request)
    if session is not None:
        form = await request.post()
        presented = request.headers.get(CSRF_HEADER) or form.get("csrf_token")
        if not isinstance(presented, str) or not check_csrf(session, presented):
            raise Forbidden("sign-out needs the session's CSRF token", code="csrf_failed")
        await request.app[SESSIONS].end(request.cookies.get(COOKIE_NAME))
    response = _redirect("/dashboard/login", status=303)
    response.del_cookie(COOKIE_NAME, path="/", samesite="Strict", secure=_secure(request))
    return response


@dashboard_routes.get("/dashboard/api/session")
async def session_info(request: web.Request) -> web.Response:
    session = await session_of(request)
    if session is None:
        raise Unauthorized("sign in at /dashboard/login")
    settings = request.app[SETTINGS]
    return web.json_response(
        {
            "csrf_token": session.csrf_token,
            "base_domain": settings.base_domain,
            "poll_seconds": POLL_SECONDS,
        }
    )


dashboard_routes.static("/dashboard/static", STATIC_DIR)
