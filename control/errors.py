"""Domain errors: every error the control plane raises on purpose is a `ClawfleetError`.

Each carries a stable machine-readable `code`, a `message` (safe to show: never a
secret) and the HTTP `status` the error middleware (control/api/middleware.py) answers
with when one reaches a request; the data layer raises these, never aiohttp's HTTP
exceptions. Errors of an integration (Hetzner, Cloudflare, Stripe) are
`IntegrationError`s: they also carry what the upstream said (`upstream_status`, 0 when
no answer came; `correlation_id`, the upstream's request id to quote to its support;
`retry_after`, the seconds it asked us to wait).

Catch the narrowest class that means what the handler handles: a handler of
`ClawfleetError` takes every deliberate failure and nothing else (a bug stays a bug).
"""

from __future__ import annotations

from shared.errors import CodedError


class ClawfleetError(CodedError):
    """The root: `code`, `message` and, for integrations, the upstream's correlation id."""

    status = 500
    code = "internal_error"


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


class IntegrationError(ServiceUnavailable):
    """An upstream service failed or refused (see the module docstring)."""

    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        upstream_status: int | None = None,
        correlation_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, correlation_id=correlation_id)
        self.upstream_status = upstream_status
        self.retry_after = retry_after


class ConfigurationError(ClawfleetError):
    """A setting or a file the operator provides is missing or malformed; the message
    names it. Raised at start-up (exit 2) and by the CLI, never inside a request."""

    code = "configuration_error"
