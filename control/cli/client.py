"""The HTTP side of `clawfleet`: one blocking request at a time to the control plane,
and the exit codes every failure maps to.

Contract:
- `Api.call` is an admin request (Bearer token, JSON in and out); `Api.send` sends
  given bytes and headers (simulate-payment's webhook deliveries, no token).
- Every answer is JSON or a `CliError`: 401 on an admin call is EXIT_AUTH, any other
  status >= 300 or a body that is not JSON is EXIT_API (the API's `error.code` and
  message, or the first line of a foreign body), a refused, timed-out or dropped
  connection is EXIT_UNREACHABLE.
- Requests go straight to the URL: no HTTP(S)_PROXY, and redirects are not followed
  (so the bearer token is never re-sent to another address).
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from typing import IO, Any

from control.errors import ClawfleetError

EXIT_OK = 0
EXIT_API = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_AUTH = 4


class CliError(ClawfleetError):
    """A failure with its exit code; the message is printed after `clawfleet: `."""

    code = "cli_error"

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # Following a redirect would hand the bearer token to whatever host it names.
    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


@dataclass(frozen=True)
class Api:
    url: str
    timeout: float
    token_source: Callable[[], str]

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """An admin API call: Bearer auth, JSON in and out."""
        headers = {"Authorization": f"Bearer {self.token_source()}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        return self.send(method, path, data, headers, admin=True)

    def send(
        self, method: str, path: str, data: bytes | None, headers: dict[str, str], *, admin: bool
    ) -> Any:
        status, payload, location = self._exchange(method, path, data, headers)
        if admin and status == 401:
            raise CliError(EXIT_AUTH, "the control plane refused ADMIN_TOKEN (401)")
        try:
            parsed = json.loads(payload) if payload else None
        except ValueError:
            parsed = None
        if 300 <= status < 400:
            raise CliError(
                EXIT_API,
                f"redirected (HTTP {status}) to {location or '?'}: not followed, so that the "
                "token stays with CLAWFLEET_URL; point it at the final address",
            )
        if status >= 300:
            code, message = _error_of(parsed, status, payload)
            raise CliError(EXIT_API, f"{code}: {message} (HTTP {status})")
        if parsed is None:
            raise CliError(
                EXIT_API,
                f"bad_response: {self.url}{path} answered HTTP {status} without a JSON body",
            )
        return parsed

    def _exchange(
        self, method: str, path: str, data: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes, str | None]:
        """(status, body, Location) of one request; the connection's failures raise."""
        # S310: config.base_url admits only http and https.
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)  # noqa: S310
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
        try:
            with opener.open(request, timeout=self.timeout) as response:
                return response.status, response.read(), None
        except urllib.error.HTTPError as exc:
            with exc:
                location = exc.headers.get("Location") if exc.headers else None
                return exc.code, _read_quietly(exc), location
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from None
        except (OSError, http.client.HTTPException) as exc:
            # Timeouts and dropped connections while reading the answer land here.
            raise self._unreachable(exc) from None

    def _unreachable(self, reason: object) -> CliError:
        return CliError(
            EXIT_UNREACHABLE, f"cannot reach the control plane at {self.url}: {describe(reason)}"
        )


def _read_quietly(exc: urllib.error.HTTPError) -> bytes:
    try:
        return exc.read()
    except (OSError, http.client.HTTPException):
        return b""


def describe(reason: object) -> str:
    """A short human reason for a connection or file error."""
    if isinstance(reason, TimeoutError) or str(reason) == "timed out":
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def _error_of(parsed: Any, status: int, payload: bytes) -> tuple[str, str]:
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        error = parsed["error"]
        return str(error.get("code", f"http_{status}")), str(error.get("message", ""))
    # Not the control plane's error shape (a proxy in between, most likely).
    text = payload.decode("utf-8", "replace").strip().splitlines()
    return f"http_{status}", (text[0][:200] if text else "no body")
