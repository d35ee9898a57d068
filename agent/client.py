"""Signed HTTP client for the worker protocol (docs/protocol.md).

Contract: every request is signed with `shared.signing.sign_request` and sent with the
exact canonical query it returned. Every failure surfaces as `ControlPlaneError`
(status 0 = the control plane could not be reached or answered garbage). Whether to
retry, and how long to wait, are small pure functions so the daemon's loops and the
tests agree on them. Nothing here logs; secrets are never part of an error message.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

import aiohttp
import msgspec
from yarl import URL

from agent.errors import AgentError
from agent.session import LazySession
from shared.backoff import backoff_delay as shared_backoff
from shared.backoff import jittered as shared_jittered
from shared.protocol import (
    MAX_TEXT,
    Assignments,
    Heartbeat,
    HeartbeatReply,
    OriginCertReply,
    OriginCertRequest,
    OriginTlsPolicy,
    ProtocolError,
    RegisterReply,
    RegisterRequest,
    clip_errors,
    decode,
    encode,
)
from shared.signing import sign_request

T = TypeVar("T")


class ControlPlaneError(AgentError):
    """A request failed. `status` is the control plane's HTTP status (0: transport failure
    or unparseable answer), `code` and `message` its error's, `correlation_id` the
    `X-Request-Id` it answered with (None when no answer came)."""

    def __init__(
        self, status: int, code: str, message: str, correlation_id: str | None = None
    ) -> None:
        super().__init__(message, code=code, correlation_id=correlation_id)
        self.status = status

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


class _ErrorBody(msgspec.Struct):
    code: str = "unknown"
    message: str = ""


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorBody = msgspec.field(default_factory=_ErrorBody)


def is_transient(err: ControlPlaneError) -> bool:
    """Outage-like failures: keep everything as it is and retry with backoff."""
    return err.status == 0 or err.status >= 500 or err.status in (408, 429)


def is_revoked(err: ControlPlaneError) -> bool:
    return err.status == 403


def is_unknown_worker(err: ControlPlaneError) -> bool:
    # The control plane answers 401 with this code (docs/protocol.md): the id is not
    # one it knows, so the signature could not even be checked.
    return err.status == 401 and err.code == "unknown_worker"


def backoff_delay(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Capped exponential backoff with jitter in [d/2, d], d = min(cap, base * 2**attempt):
    shared/backoff.py's formula, with the randomness drawn here."""
    return shared_backoff(attempt, base=base, cap=cap, rand=rand())


def jittered(interval: float, rand: Callable[[], float] = random.random) -> float:
    """An interval spread by +-10% so a fleet restarted together does not beat in step."""
    return shared_jittered(interval, spread=0.1, rand=rand())


def after_failure(period: float, failed: bool, rand: Callable[[], float] = random.random) -> float:
    """`period` (a heartbeat's delay, a long-poll's wait), or right after a failure a
    random share of it, in (0, period]. Agents that lost the control plane together (a
    restart, a network cut) come back together, and requests answered in the same second
    come again in the same second, for ever (the heartbeats' 10 % jitter takes minutes to
    part them); one random period spreads them over a whole one, for one early request
    each. Never later than `period`: a heartbeat's deadline is not moved."""
    return period * (1.0 - rand()) if failed else period


def poll_wait(wait: int, failed: bool, rand: Callable[[], float] = random.random) -> int:
    """The `wait` of the next long-poll, `after_failure`'s in whole seconds: at least 1
    (0, an answer at once, stays 0)."""
    return min(wait, max(1, math.ceil(after_failure(wait, failed, rand)))) if wait > 0 else 0


def split_token(token: str) -> tuple[str, str]:
    key_id, _, secret = token.partition(".")
    return key_id, secret


class ControlClient:
    def __init__(self, base_url: str, *, timeout: float = 15.0) -> None:
        self._base = base_url.rstrip("/")
        self._prefix = urlsplit(self._base).path.rstrip("/")
        self._timeout = timeout
        self._session = LazySession(limit=4, headers={"User-Agent": "clawfleet-agent"})

    async def close(self) -> None:
        await self._session.close()

    async def _request(
        self,
        method: str,
        endpoint: str,
        key_id: str,
        secret: str,
        *,
        params: dict[str, str] | None = None,
        body: bytes = b"",
        request_timeout: float | None = None,
    ) -> tuple[int, bytes]:
        path = self._prefix + endpoint
        query, headers = sign_request(key_id, secret, method, path, params, body)
        if body:
            headers["Content-Type"] = "application/json"
        url = URL(self._base + endpoint + (f"?{query}" if query else ""), encoded=True)
        client_timeout = aiohttp.ClientTimeout(total=request_timeout or self._timeout)
        try:
            async with self._session.get().request(
                method, url, data=body or None, headers=headers, timeout=client_timeout
            ) as resp:
                payload = await resp.read()
                status = resp.status
                request_id = resp.headers.get("X-Request-Id")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ControlPlaneError(0, "unreachable", type(exc).__name__) from None
        if status >= 400:
            code, message = "http_error", f"HTTP {status}"
            try:
                # decode() bounds nesting too: a hostile answer cannot blow the stack.
                envelope = decode(payload, _ErrorEnvelope)
                code, message = envelope.error.code, envelope.error.message[:MAX_TEXT]
            except ProtocolError:
                pass
            raise ControlPlaneError(status, code, message, request_id)
        return status, payload

    @staticmethod
    def _decode(payload: bytes, kind: type[T]) -> T:
        try:
            return decode(payload, kind)
        except ProtocolError as exc:
            raise ControlPlaneError(0, "bad_reply", str(exc)) from None

    async def register(self, token: str, request: RegisterRequest) -> RegisterReply:
        key_id, secret = split_token(token)
        _, payload = await self._request(
            "POST", "/v1/agent/register", key_id, secret, body=encode(request)
        )
        return self._decode(payload, RegisterReply)

    async def heartbeat(self, worker_id: str, secret: str, beat: Heartbeat) -> HeartbeatReply:
        _, payload = await self._request(
            "POST", "/v1/agent/heartbeat", worker_id, secret, body=encode(clip_errors(beat))
        )
        return self._decode(payload, HeartbeatReply)

    async def assignments(
        self, worker_id: str, secret: str, after: int, wait: int
    ) -> Assignments | None:
        """None when nothing newer than `after` arrived within `wait` seconds (304)."""
        status, payload = await self._request(
            "GET",
            "/v1/agent/assignments",
            worker_id,
            secret,
            params={"after": str(after), "wait": str(wait)},
            request_timeout=wait + self._timeout,
        )
        if status == 304:
            return None
        return self._decode(payload, Assignments)

    async def origin_tls_policy(self, worker_id: str, secret: str) -> OriginTlsPolicy:
        """What the control plane signs for this worker (agent/origin_tls.py)."""
        _, payload = await self._request("GET", "/v1/agent/origin-tls", worker_id, secret)
        return self._decode(payload, OriginTlsPolicy)

    async def origin_certificate(
        self, worker_id: str, secret: str, request: OriginCertRequest
    ) -> OriginCertReply:
        """Sends a CSR (never a key) and gets the Origin CA certificate back."""
        _, payload = await self._request(
            "POST", "/v1/agent/origin-tls", worker_id, secret, body=encode(request)
        )
        return self._decode(payload, OriginCertReply)
