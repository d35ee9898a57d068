"""Cross-cutting HTTP concerns: request ids, the one JSON error shape, body limits,
admin auth. `create_app` installs them in that order (outermost first).
Worker-protocol calls (a route under `/v1/agent/`) take a short path: `request_ids`
runs the route itself with the error shape and the body limit, and no other
middleware (issue 16: each holds a frame for as long as a long-poll waits; the agent
handlers authenticate their own signed requests). Unknown routes under that prefix
run the whole chain.

`request_ids` takes a sane `X-Request-Id` from the caller (1-64 of `A-Za-z0-9._-`,
whole value, or it makes one), sets it in `logs.REQUEST_ID` so every record logged
while serving carries it, returns it in the response header (error responses too),
and logs one access line per request: the method, the path (never the query), the
status and the time; agent calls that succeed at DEBUG, the rest at INFO.

Every error leaves as `{"error": {"code": str, "message": str}}`: domain errors with
their own status and code (and headers, e.g. `Retry-After` on 429 `rate_limited`),
aiohttp's HTTP exceptions (unknown route, wrong method, oversized body) mapped to the
same shape, anything unexpected as a 500 whose message reveals nothing (the
traceback goes to the log).

`admin_auth` is where presented credentials are checked for the admin API and for
`/metrics`: an address that failed too often is refused with 429 before its
credential is compared, and every wrong credential counts (control/api/ratelimit.py).
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from control import logs
from control.api import metrics_endpoint, sessions
from control.api.ratelimit import RateLimited
from control.appkeys import AUTH_GUARD
from control.errors import ClawfleetError, Forbidden, PayloadTooLarge, Unauthorized

log = logging.getLogger(__name__)
access = logging.getLogger("clawfleet.access")
_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = 1024 * 1024
AGENT_PREFIX = "/v1/agent/"
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
}


@web.middleware
async def request_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    presented = request.headers.get("X-Request-Id", "")
    request_id = presented if _SANE_ID.fullmatch(presented) else secrets.token_hex(8)
    token = logs.REQUEST_ID.set(request_id)
    started = time.monotonic()
    status = 500
    try:
        route = _agent_route(request)
        if route is None:
            response = await handler(request)
        else:  # the short path: `errors` and `body_limit` in this frame (module docstring)
            try:
                _check_length(request)
                response = await route(request)
            except Exception as exc:
                response = rendered(request, exc)
        status = response.status
        response.headers["X-Request-Id"] = request_id
        return response
    except web.HTTPException as exc:
        status = exc.status
        exc.headers["X-Request-Id"] = request_id
        raise
    finally:
        # The path only: query strings can carry nothing secret today, but never log them.
        # Heartbeats and long-polls are the bulk of the traffic: logged when they fail.
        quiet = request.path.startswith("/v1/agent/") and status < 400
        access.log(
            logging.DEBUG if quiet else logging.INFO,
            "%s %s %d %.1fms",
            request.method,
            request.path,
            status,
            (time.monotonic() - started) * 1000,
        )
        logs.REQUEST_ID.reset(token)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as exc:
        return rendered(request, exc)


def rendered(request: web.Request, exc: Exception) -> web.Response:
    """The one error shape for `exc`; an HTTP exception below 400 (a redirect, a 304)
    is re-raised as it is."""
    if isinstance(exc, RateLimited):
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    if isinstance(exc, ClawfleetError):
        return error_response(exc.status, exc.code, exc.message)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = "request body is larger than 1 MiB" if exc.status == 413 else exc.reason
        return error_response(exc.status, code, message)
    # Anything else is a bug: one 500 that reveals nothing, and the log.
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return error_response(500, "internal_error", "internal error (see the control plane log)")


@web.middleware
async def body_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    _check_length(request)
    return await handler(request)


def _check_length(request: web.Request) -> None:
    # Refuse early on a declared length; aiohttp's client_max_size still guards
    # chunked bodies when they are read.
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise PayloadTooLarge("request body is larger than 1 MiB")


def _agent_route(request: web.Request) -> Handler | None:
    """The route's own handler for a matched worker-protocol call, else None (the whole
    chain runs: unknown routes and wrong methods get their 404/405 there)."""
    if not request.path.startswith(AGENT_PREFIX) or request.match_info.http_exception:
        return None
    return request.match_info.handler


def admin_auth(token: str, metrics_token: str = "") -> Middleware:
    """An admin request passes with `Authorization: Bearer <ADMIN_TOKEN>` or, when it
    sends no Authorization header at all, with a live dashboard session cookie (a
    wrong token is a failed guess, never rescued by a cookie); a cookie-authorized
    unsafe method also needs the session's CSRF token in `X-CSRF-Token` (else 403
    `csrf_failed`). `/metrics` passes per control/api/metrics_endpoint.py `check`."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if _is_admin_path(request.path):
            await _check_admin(request, expected)
        elif request.path == "/metrics":
            await _guarded(
                request, "metrics token", lambda: metrics_endpoint.check(request, metrics_token)
            )
        return await handler(request)

    return check


async def _check_admin(request: web.Request, expected: bytes) -> None:
    presented = request.headers.get("Authorization")
    if presented is not None:

        def bearer() -> None:
            if not hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), expected):
                raise Unauthorized("admin API needs Authorization: Bearer <ADMIN_TOKEN>")

        await _guarded(request, "admin token", bearer)
        return
    session = await sessions.session_of(request)
    if session is None:
        raise Unauthorized("admin API needs Authorization: Bearer <ADMIN_TOKEN>")
    if request.method not in _SAFE_METHODS and not sessions.check_csrf(
        session, request.headers.get(sessions.CSRF_HEADER)
    ):
        raise Forbidden(
            f"dashboard actions need the session's {sessions.CSRF_HEADER} header",
            code="csrf_failed",
        )


async def _guarded(request: web.Request, surface: str, verify: Callable[[], None]) -> None:
    """Runs `verify` unless the caller's address is blocked; a refusal counts."""
    guard = request.app.get(AUTH_GUARD)
    if guard is None:
        verify()
        return
    presents = "Authorization" in request.headers
    if presents:
        guard.refuse_if_blocked(request, surface)
    try:
        verify()
    except (Unauthorized, Forbidden):
        if presents:
            await guard.failed(request, surface)
        raise


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _is_admin_path(path: str) -> bool:
    # Workers sign their own requests, Stripe signs its webhooks, and the agent wheel
    # is public code its installer verifies by hash.
    return path.startswith("/v1/") and not path.startswith(
        ("/v1/agent/", "/v1/stripe/", "/v1/dist/")
    )
