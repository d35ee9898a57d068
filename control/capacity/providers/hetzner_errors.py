"""What Hetzner's errors mean: the `classify` table and the ProviderErrors built from
hcloud's exceptions.

Contract:
- `classify(status, code)` maps an API error to an `ErrorKind` (what the autoscaler does
  about it): a known `code` decides, otherwise the HTTP status; status 0 means no answer.
- `api_error(exc, what, reply)` builds the `ProviderError` of a failed call: the API's
  code, a message that never contains the token (a refused or read-only token gets a
  message naming HETZNER_API_TOKEN), the HTTP status and `X-Correlation-Id` the response
  hook saw (`hetzner_ratelimit.Reply`), and for a 429 `retry_after`, the time until ONE request is
  available again (`shared.backoff.rate_limit_wait`; `RateLimit-Reset` is when the
  bucket is FULL, an upper bound, never the wait itself).
- `request_error(exc, what, timeout)` does the same for a request that got no answer
  (kind "transient", code "timeout" or "connection_error"); `action_error` reads the
  error of a failed action.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any

import requests
from hcloud import APIException

from control.capacity.providers.base import ErrorKind, ProviderError
from control.capacity.providers.hetzner_ratelimit import Reply
from shared.backoff import rate_limit_wait

# Codes whose meaning does not depend on the HTTP status they come with.
_CODE_KINDS: dict[str, ErrorKind] = {
    "resource_unavailable": "unavailable",  # 412: this type/location cannot be ordered now
    "placement_error": "unavailable",  # 422: no host for it in this location right now
    "resource_limit_exceeded": "limit",  # 403: project limit (servers, cores, ...)
    "rate_limit_exceeded": "rate_limited",  # 429
    "not_found": "not_found",  # 404
    "unauthorized": "invalid",  # 401: bad token
    "token_readonly": "invalid",  # 401: read-only token
    "forbidden": "invalid",  # 403
    "invalid_input": "invalid",  # 422
    "json_error": "invalid",  # 400
    "uniqueness_error": "invalid",  # 409: create() adopts before this surfaces
    "unsupported_error": "invalid",  # 422
    "protected": "invalid",  # 423: delete protection is on; retrying will not help
    "deprecated_api_endpoint": "invalid",  # 410
    "method_not_allowed": "invalid",  # 405
    "maintenance": "transient",  # 403: temporary by nature
    "conflict": "transient",  # 409: "the resource changed during the request, retry"
    "locked": "transient",  # 423: another action is running on it
    "service_error": "transient",  # 422: error within a service
    "server_error": "transient",  # 500
    "unavailable": "transient",  # 503: a service is temporarily unavailable
    "timeout": "transient",  # 504
    "connection_error": "transient",  # ours: the request did not get an answer
}


def classify(status: int, code: str) -> ErrorKind:
    """What the autoscaler should do about an API error.

    A known `code` decides (a 412 with another code, e.g. `primary_ip_version_mismatch`,
    is our mistake, not a sold-out pair); otherwise the HTTP status does. `status` 0 means
    no HTTP answer at all (timeout, connection error).
    """
    kind = _CODE_KINDS.get(code)
    if kind is not None:
        return kind
    if status == 0 or status == 408 or status >= 500:
        return "transient"
    if status == 429:
        return "rate_limited"
    if status == 404:
        return "not_found"
    return "invalid"


def api_error(exc: APIException, what: str, reply: Reply) -> ProviderError:
    """The ProviderError for an hcloud APIException, with what the response hook saw of
    the failed reply (`reply`): status, correlation id, and for 429 the rate-limit wait."""
    # hcloud puts the HTTP status in `code` when the body is not the error envelope.
    status = exc.code if isinstance(exc.code, int) else reply.status
    code = exc.code if isinstance(exc.code, str) else ""
    kind = classify(status, code)
    message = f"Hetzner API: {what} failed: {exc.message}"
    if code == "unauthorized":
        message = f"Hetzner API rejected HETZNER_API_TOKEN while trying to {what}"
    elif code == "token_readonly":
        message = f"HETZNER_API_TOKEN is read-only; {what} needs a read/write token"
    retry_after = None
    if kind == "rate_limited":
        reset_in = None if reply.reset is None else max(0.0, reply.reset - time.time())
        retry_after = rate_limit_wait(reply.limit, reply.remaining, reset_in, rand=random.random())
    return ProviderError(
        message,
        kind=kind,
        code=code or str(status),
        upstream_status=status or None,
        # hcloud >= 2.x sets correlation_id; the hook saw the header in any case.
        correlation_id=getattr(exc, "correlation_id", None) or reply.correlation_id,
        retry_after=retry_after,
    )


def request_error(exc: requests.RequestException, what: str, timeout: float) -> ProviderError:
    """The ProviderError of a request that got no answer."""
    if isinstance(exc, requests.Timeout):
        return ProviderError(
            f"Hetzner API: {what} timed out after {timeout:g} s",
            kind="transient",
            code="timeout",
        )
    # The exception text names the URL (never the token, which is a header).
    return ProviderError(
        f"Hetzner API: {what} failed: {type(exc).__name__}: {exc}",
        kind="transient",
        code="connection_error",
    )


def action_error(error: Mapping[str, Any] | None) -> tuple[str, str]:
    if not error:
        return "action_failed", "no error details"
    return str(error.get("code") or "action_failed"), str(error.get("message") or "")
