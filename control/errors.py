"""Domain errors. Each carries the HTTP status and a stable machine-readable code;
the error middleware (control/api/middleware.py) renders them. The data layer raises
these, never aiohttp's HTTP exceptions."""

from __future__ import annotations


class ClawfleetError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequest(ClawfleetError):
    status = 400
    code = "bad_request"


class Unauthorized(ClawfleetError):
    status = 401
    code = "unauthorized"


class Forbidden(ClawfleetError):
    status = 403
    code = "forbidden"


class NotFound(ClawfleetError):
    status = 404
    code = "not_found"


class Conflict(ClawfleetError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ClawfleetError):
    status = 413
    code = "payload_too_large"


class ServiceUnavailable(ClawfleetError):
    """Something the request needs cannot be used right now (the database, a
    provider); retrying later may succeed."""

    status = 503
    code = "service_unavailable"
