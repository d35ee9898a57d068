"""Cross-cutting HTTP concerns: the one JSON error shape, body limits, admin auth.

Every error leaves as `{"error": {"code": str, "message": str}}`: domain errors with
their own status and code, aiohttp's HTTP exceptions (unknown route, wrong method,
oversized body) mapped to the same shape, anything unexpected as a 500 whose
message reveals nothing (the traceback goes to the log).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from control import sessions
from control.errors import ClawfleetError, Forbidden, PayloadTooLarge, Unauthorized

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = 1024 * 1024
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
}


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ClawfleetError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = "request body is larger than 1 MiB" if exc.status == 413 else exc.reason
        return error_response(exc.status, code, message)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error (see the control plane log)")


@web.middleware
async def body_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Refuse early on a declared length; aiohttp's client_max_size still guards
    # chunked bodies when they are read.
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise PayloadTooLarge("request body is larger than 1 MiB")
    return await handler(request)


def admin_auth(token: str) -> Middleware:
    """An admin request passes with `Authorization: Bearer <ADMIN_TOKEN>` or with a
    live dashboard session cookie; a cookie-authorized unsafe method also needs the
    session's CSRF token in `X-CSRF-Token` (else 403 `csrf_failed`)."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if _is_admin_path(request.path):
            presented = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(presented, expected):
                session = sessions.session_of(request)
                if session is None:
                    raise Unauthorized("admin API needs Authorization: Bearer <ADMIN_TOKEN>")
                if request.method not in _SAFE_METHODS and not sessions.check_csrf(
                    session, request.headers.get(sessions.CSRF_HEADER)
                ):
                    raise Forbidden(
                        f"dashboard actions need the session's {sessions.CSRF_HEADER} header",
                        code="csrf_failed",
                    )
        return await handler(request)

    return check


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _is_admin_path(path: str) -> bool:
    # Workers sign their own requests, Stripe signs its webhooks, and the agent wheel
    # is public code its installer verifies by hash.
    return path.startswith("/v1/") and not path.startswith(
        ("/v1/agent/", "/v1/stripe/", "/v1/dist/")
    )
