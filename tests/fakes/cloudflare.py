"""A fake Cloudflare API v4 (aiohttp, 127.0.0.1 only) for the DNS calls Clawfleet makes.

Use it through the `cloudflare_fake` fixture: add `"tests.fakes.cloudflare"` to
`pytest_plugins` in tests/conftest.py, or import it into a test module with
`from tests.fakes.cloudflare import cloudflare_fake_fixture  # noqa: F401`:

    async def test_x(cloudflare_fake: CloudflareFake) -> None:
        api = CloudflareApi(cloudflare_fake.token, cloudflare_fake.zone_id,
                            api_base=cloudflare_fake.url)
        dns = CloudflareDns(api, "example.com", "prod")
        cloudflare_fake.inject("POST /zones/{zone_id}/dns_records", 429, 971, retry_after=2)
        ...

What it serves, under `/client/v4` as the real API (so `.url` is a drop-in `base_url`):
GET /user/tokens/verify, GET /zones/{zone_id}, GET and POST /zones/{zone_id}/dns_records,
POST /zones/{zone_id}/dns_records/batch (only an empty batch: the permission probe), and
GET, PATCH, PUT, DELETE /zones/{zone_id}/dns_records/{id}. Every answer is the v4
envelope `{"success", "errors": [{"code", "message"}], "messages", "result"}`, lists add
`result_info` {page, per_page, count, total_count, total_pages} (per_page default 100,
at most 5000). It also serves the edge endpoints (GET /ips, Origin CA /certificates,
/zones/{zone_id}/settings/ssl, /zones/{zone_id}/origin_tls_client_auth), whose state is
`fake.edge` and whose contract is tests/fakes/cloudflare_edge.py's docstring. Credentials:
a request passes with the Bearer token; GET /ips with none; /certificates also with
`X-Auth-User-Service-Key: <fake.edge.origin_ca_key>` (and then no scope is checked).

List filters, as the `cloudflare` SDK sends them (nested filters are flattened with dots):
`name` (legacy exact match), `name.exact`, `name.contains`, `name.startswith`,
`name.endswith`, `type`, `content.exact`, `comment.exact`, `comment.startswith`,
`comment.contains`, `comment.present`, `comment.absent`; `match=all` (the default) or
`any`. Name and comment filters are case-insensitive, as documented.

Real behaviour reproduced:
- Authentication: a request without `Authorization: Bearer <fake.token>` gets 401 code
  1000 "Invalid API Token" from /user/tokens/verify and 403 code 10000 "Authentication
  error" anywhere else. `token_status` ("active", "disabled", "expired") is what verify
  reports; `user_token=False` makes verify answer 401/1000 for the right token too (an
  account-owned token must be verified under /accounts/..., not /user/...).
- Permissions: `scopes` (default {"zone:read", "dns:read", "dns:edit"} and the edge's
  "ssl:read", "ssl:edit", "zone_settings:read", "zone_settings:edit"): without
  "zone:read", GET /zones/{id} is 403/10000; without "dns:read" and "dns:edit", DNS reads
  are 403/10000; without "dns:edit", every DNS write is 403/10000 (as a read-only token).
- An unknown zone id: 404 code 7003 "Could not route to ...".
- Creating an A/AAAA record identical to an existing one (name, type, content) is 400
  code 81058 "An identical record already exists."; an A/AAAA/CNAME next to a CNAME (or a
  CNAME next to anything) is 400 code 81053; a missing record id is 404 code 81044
  "Record does not exist."; invalid input is 400 code 9005/9020/9021/1004.
- Names are stored lower-case without a trailing dot; a relative name gets the zone
  appended, as the dashboard and API do.

State and inspection:
- `records`: {id: record object}; edit freely to simulate drift made by hand.
- `add_record(name, content, type="A", ...)`: seed a record; returns it.
- `calls`: every request as `Call(method, endpoint, query, body, status)`; `count(endpoint)`.
  Endpoints are named like "POST /zones/{zone_id}/dns_records" (see `ENDPOINTS`).
- `rate_limit` requests per `rate_window` seconds (default 1200 per 300, the real global
  limit): beyond it, 429 code 971 with `Retry-After` (seconds until the oldest request in
  the window expires, at least 1).

Injection (each applies to the next `times` calls of that endpoint, in order queued):
- `inject(endpoint, status, code, message=None, times=1, retry_after=None,
  after_effect=False)`: answer with that error envelope (and `Retry-After` when given).
  With `after_effect=True` the request takes effect first (e.g. the record is stored),
  then the error is returned: "already exists" from a concurrent writer, a 5xx after
  the write.
- `delay(endpoint, seconds, times=1, after_effect=False)`: sleep before handling; with
  `after_effect=True` the call takes effect first, then the reply is held back: a client
  timeout after the effect.
- `outage(status=503, code=..., retry_after=None)`: every request, whatever its endpoint
  or token, gets that error (before authentication, as from Cloudflare's edge) until
  `clear_faults()`, which also drops every queued injection and delay.
Sleeps end early when the fake closes, so teardown never waits for them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.fakes import cloudflare_edge
from tests.fakes.common import endpoint_and_body

PREFIX = "/client/v4"

ENDPOINTS = frozenset(
    {
        "GET /user/tokens/verify",
        "GET /zones/{zone_id}",
        "GET /zones/{zone_id}/dns_records",
        "POST /zones/{zone_id}/dns_records",
        "POST /zones/{zone_id}/dns_records/batch",
        "GET /zones/{zone_id}/dns_records/{id}",
        "PATCH /zones/{zone_id}/dns_records/{id}",
        "PUT /zones/{zone_id}/dns_records/{id}",
        "DELETE /zones/{zone_id}/dns_records/{id}",
    }
)
ENDPOINTS |= cloudflare_edge.ENDPOINTS  # IP ranges, Origin CA, SSL mode, origin pulls

ALL_SCOPES = frozenset({"zone:read", "dns:read", "dns:edit"}) | cloudflare_edge.SCOPES

Json = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_BODY = web.RequestKey("body", object)  # the parsed JSON body, read once by the middleware
_TYPES = frozenset({"A", "AAAA", "CNAME", "TXT", "MX", "NS", "CAA", "SRV"})
_HOST_TYPES = frozenset({"A", "AAAA", "CNAME"})  # the types that conflict with a CNAME


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Call:
    method: str
    endpoint: str  # e.g. "GET /zones/{zone_id}/dns_records"; "" when no route matched
    query: dict[str, str]
    body: Any
    status: int = 0


@dataclass
class _Fault:
    status: int
    code: int
    message: str
    retry_after: float | None
    after_effect: bool


@dataclass
class _Delay:
    seconds: float
    after_effect: bool


@dataclass
class CloudflareFake:
    token: str = field(default_factory=lambda: "fake-cf-" + secrets.token_hex(20))
    zone_id: str = field(default_factory=lambda: secrets.token_hex(16))
    zone_name: str = "example.com"
    scopes: set[str] = field(default_factory=lambda: set(ALL_SCOPES))
    token_status: str = "active"
    user_token: bool = True
    edge: cloudflare_edge.CloudflareEdge = field(default_factory=cloudflare_edge.CloudflareEdge)
    records: dict[str, Json] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    rate_limit: int = 1200
    rate_window: float = 300.0
    url: str = ""  # the API base URL, e.g. http://127.0.0.1:PORT/client/v4, once started

    def __post_init__(self) -> None:
        self._faults: dict[str, deque[_Fault]] = {}
        self._outage: _Fault | None = None
        self._delays: dict[str, deque[_Delay]] = {}
        self._recent: deque[float] = deque()  # monotonic times of requests in the window
        self._seq = itertools.count(1)
        self._closing = asyncio.Event()
        self._server: TestServer | None = None

    # -- injection API --------------------------------------------------------------

    def inject(
        self,
        endpoint: str,
        status: int,
        code: int,
        message: str | None = None,
        *,
        times: int = 1,
        retry_after: float | None = None,
        after_effect: bool = False,
    ) -> None:
        _check_endpoint(endpoint)
        fault = _Fault(status, code, message or f"injected {code}", retry_after, after_effect)
        self._faults.setdefault(endpoint, deque()).extend([fault] * times)

    def delay(
        self, endpoint: str, seconds: float, *, times: int = 1, after_effect: bool = False
    ) -> None:
        _check_endpoint(endpoint)
        self._delays.setdefault(endpoint, deque()).extend([_Delay(seconds, after_effect)] * times)

    def outage(
        self,
        status: int = 503,
        code: int = 10000,
        message: str = "Service Unavailable",
        *,
        retry_after: float | None = None,
    ) -> None:
        self._outage = _Fault(status, code, message, retry_after, after_effect=False)

    def clear_faults(self) -> None:
        """The API is healthy again: no outage, no queued fault nor delay."""
        self._outage = None
        self._faults.clear()
        self._delays.clear()

    def count(self, endpoint: str) -> int:
        _check_endpoint(endpoint)
        return sum(1 for call in self.calls if call.endpoint == endpoint)

    def add_record(
        self,
        name: str,
        content: str,
        type: str = "A",
        *,
        comment: str | None = None,
        proxied: bool = False,
        ttl: int = 1,
    ) -> Json:
        record = self._make_record(
            {
                "name": name,
                "type": type,
                "content": content,
                "comment": comment,
                "proxied": proxied,
                "ttl": ttl,
            }
        )
        self.records[record["id"]] = record
        return record

    def named(self, name: str) -> list[Json]:
        """The records with this exact name (any type), oldest first."""
        wanted = self._normalize(name)
        return [r for r in self.records.values() if r["name"] == wanted]

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._server = TestServer(self.app(), host="127.0.0.1")
        await self._server.start_server()
        self.url = str(self._server.make_url(PREFIX))

    async def close(self) -> None:
        self._closing.set()
        if self._server is not None:
            await self._server.close()
            self._server = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        zone = PREFIX + "/zones/{zone_id}"
        app.router.add_get(PREFIX + "/user/tokens/verify", self._verify)
        app.router.add_get(zone, self._get_zone)
        app.router.add_get(zone + "/dns_records", self._list_records)
        app.router.add_post(zone + "/dns_records", self._create_record)
        app.router.add_post(zone + "/dns_records/batch", self._batch)
        app.router.add_get(zone + "/dns_records/{id}", self._get_record)
        app.router.add_patch(zone + "/dns_records/{id}", self._patch_record)
        app.router.add_put(zone + "/dns_records/{id}", self._put_record)
        app.router.add_delete(zone + "/dns_records/{id}", self._delete_record)
        handlers = self.edge.handlers()
        for method, path in cloudflare_edge.ROUTES:
            app.router.add_route(method, PREFIX + path, self._edge(handlers[f"{method} {path}"]))
        return app

    # -- plumbing ---------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        endpoint, body = await endpoint_and_body(request, PREFIX)
        call = Call(request.method, endpoint, dict(request.query), body)
        self.calls.append(call)
        response = await self._answer(request, handler, endpoint, body)
        call.status = response.status
        return response

    async def _answer(
        self, request: web.Request, handler: Handler, endpoint: str, body: Any
    ) -> web.StreamResponse:
        down = self._outage
        if down is not None:
            return _error(down.status, down.code, down.message, retry_after=down.retry_after)
        limited = self._rate_limited()
        if limited is not None:
            return _error(
                429,
                971,
                "Please wait and consider throttling your request speed",
                retry_after=limited,
            )
        how = self._authenticated(request, endpoint)
        if how is None:
            if endpoint == "GET /user/tokens/verify":
                return _error(401, 1000, "Invalid API Token")
            return _error(403, 10000, "Authentication error")
        if not endpoint:
            return _error(404, 7000, "No route for that URI")
        zone_id = request.match_info.get("zone_id")
        if zone_id is not None and zone_id != self.zone_id:
            return _error(
                404,
                7003,
                f"Could not route to /zones/{zone_id}, perhaps your object identifier is invalid?",
            )
        denied = self._denied(endpoint) if how == "token" else None
        if denied is not None:
            return denied
        request[_BODY] = body
        faults = self._faults.get(endpoint)
        fault = faults.popleft() if faults else None
        if fault is not None and not fault.after_effect:
            return _error(fault.status, fault.code, fault.message, retry_after=fault.retry_after)
        delays = self._delays.get(endpoint)
        delay = delays.popleft() if delays else None
        if delay is not None and not delay.after_effect:
            await self._sleep(delay.seconds)
        response = await handler(request)
        if delay is not None and delay.after_effect:
            await self._sleep(delay.seconds)
        if fault is not None:  # after_effect: the change is made, the answer is an error
            return _error(fault.status, fault.code, fault.message, retry_after=fault.retry_after)
        return response

    def _rate_limited(self) -> float | None:
        """None when the request fits in the window, else the seconds to wait."""
        now = time.monotonic()
        while self._recent and now - self._recent[0] >= self.rate_window:
            self._recent.popleft()
        if len(self._recent) >= self.rate_limit:
            oldest = self._recent[0] if self._recent else now
            return max(1.0, self.rate_window - (now - oldest))
        self._recent.append(now)
        return None

    def _authenticated(self, request: web.Request, endpoint: str) -> str | None:
        """How the request is authenticated ("token", "public", "origin_ca_key"), or None."""
        if request.headers.get("Authorization") == f"Bearer {self.token}":
            return "token"
        if endpoint in cloudflare_edge.PUBLIC_ENDPOINTS:
            return "public"
        key = request.headers.get("X-Auth-User-Service-Key")
        if endpoint in cloudflare_edge.ORIGIN_CA_ENDPOINTS and key == self.edge.origin_ca_key:
            return "origin_ca_key"
        return None

    def _edge(self, handler: cloudflare_edge.EdgeHandler) -> Handler:
        async def serve(request: web.Request) -> web.StreamResponse:
            params = dict(request.match_info)
            call = cloudflare_edge.EdgeRequest(
                self.zone_id, self.zone_name, request.query, params, request[_BODY]
            )
            try:
                reply = handler(call)
            except cloudflare_edge.ApiError as exc:
                return _error(exc.status, exc.code, exc.message)
            return _ok(reply.result, result_info=reply.result_info)

        return serve

    def _denied(self, endpoint: str) -> web.Response | None:
        if endpoint == "GET /zones/{zone_id}":
            needed = {"zone:read"}
        elif endpoint.startswith("GET /zones/{zone_id}/dns_records"):
            # DNS Edit implies DNS Read, as on the real API.
            needed = {"dns:read"} if "dns:edit" not in self.scopes else set()
        elif "/dns_records" in endpoint:
            needed = {"dns:edit"}
        elif endpoint in cloudflare_edge.ENDPOINTS:
            needed = cloudflare_edge.needed_scopes(endpoint, self.scopes)
        else:
            needed = set()
        if needed - self.scopes:
            return _error(403, 10000, "Authentication error")
        return None

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._closing.wait(), timeout=seconds)
        except TimeoutError:
            pass

    # -- handlers ---------------------------------------------------------------------

    async def _verify(self, request: web.Request) -> web.StreamResponse:
        if not self.user_token:
            return _error(401, 1000, "Invalid API Token")
        messages = [{"code": 10000, "message": "This API Token is valid and active"}]
        if self.token_status != "active":
            messages = []
        return _ok({"id": "f" * 32, "status": self.token_status}, messages=messages)

    async def _get_zone(self, request: web.Request) -> web.StreamResponse:
        return _ok(
            {
                "id": self.zone_id,
                "name": self.zone_name,
                "status": "active",
                "paused": False,
                "type": "full",
                "name_servers": ["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"],
                "plan": {"id": "0" * 32, "name": "Free Website", "legacy_id": "free"},
            }
        )

    async def _list_records(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        try:
            match = _filters(query)
        except ValueError as exc:
            return _error(400, 9000, f"invalid filter: {exc}")
        items = [r for r in self._ordered() if match(r)]
        try:
            page = int(query.get("page", "1"))
            per_page = int(query.get("per_page", "100"))
        except ValueError:
            return _error(400, 1004, "page and per_page must be integers")
        if page < 1 or per_page < 1:
            return _error(400, 1004, "page and per_page must be positive")
        per_page = min(per_page, 5000)
        total_pages = max(1, -(-len(items) // per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        info = {
            "page": page,
            "per_page": per_page,
            "count": len(chunk),
            "total_count": len(items),
            "total_pages": total_pages,
        }
        return _ok(chunk, result_info=info)

    async def _create_record(self, request: web.Request) -> web.StreamResponse:
        body = request[_BODY]
        if not isinstance(body, dict):
            return _error(400, 9207, "Request body is invalid.")
        problem = self._check(body, None)
        if problem is not None:
            return problem
        record = self._make_record(body)
        self.records[record["id"]] = record
        return _ok(record)

    async def _batch(self, request: web.Request) -> web.StreamResponse:
        body = request[_BODY]
        if not isinstance(body, dict):
            return _error(400, 9207, "Request body is invalid.")
        if any(body.get(k) for k in ("deletes", "patches", "puts", "posts")):
            return _error(400, 1004, "the fake only accepts an empty batch")
        return _ok({"deletes": [], "patches": [], "puts": [], "posts": []})

    async def _get_record(self, request: web.Request) -> web.StreamResponse:
        record = self.records.get(request.match_info["id"])
        if record is None:
            return _missing()
        return _ok(record)

    async def _patch_record(self, request: web.Request) -> web.StreamResponse:
        return self._update(request, partial=True)

    async def _put_record(self, request: web.Request) -> web.StreamResponse:
        return self._update(request, partial=False)

    def _update(self, request: web.Request, *, partial: bool) -> web.StreamResponse:
        record_id = request.match_info["id"]
        record = self.records.get(record_id)
        if record is None:
            return _missing()
        body = request[_BODY]
        if not isinstance(body, dict):
            return _error(400, 9207, "Request body is invalid.")
        fields = ("name", "type", "content", "proxied", "ttl", "comment", "tags")
        merged = {k: record[k] for k in fields} if partial else {}
        merged.update({k: v for k, v in body.items() if k in fields})
        problem = self._check(merged, record_id)
        if problem is not None:
            return problem
        updated = self._make_record(merged, record)
        self.records[record_id] = updated
        return _ok(updated)

    async def _delete_record(self, request: web.Request) -> web.StreamResponse:
        record_id = request.match_info["id"]
        if self.records.pop(record_id, None) is None:
            return _missing()
        return _ok({"id": record_id})

    # -- objects ----------------------------------------------------------------------

    def _normalize(self, name: str) -> str:
        name = name.strip().rstrip(".").lower()
        if name == "@":
            return self.zone_name
        if name != self.zone_name and not name.endswith("." + self.zone_name):
            name = f"{name}.{self.zone_name}"
        return name

    def _ordered(self) -> list[Json]:
        return sorted(self.records.values(), key=lambda r: r["_seq"])

    def _check(self, body: Json, record_id: str | None) -> web.Response | None:
        name, rtype, content = body.get("name"), body.get("type"), body.get("content")
        if not isinstance(name, str) or not name:
            return _error(400, 9007, "Name is required.")
        if rtype not in _TYPES:
            return _error(400, 9000, "DNS record type is invalid.")
        if not isinstance(content, str) or not content:
            return _error(400, 9005, "Content for record is invalid.")
        if rtype == "A":
            try:
                ipaddress.IPv4Address(content)
            except ValueError:
                return _error(400, 9005, "Content for A record must be a valid IPv4 address.")
        ttl = body.get("ttl", 1)
        if not isinstance(ttl, int) or not (ttl == 1 or 60 <= ttl <= 86400):
            return _error(
                400, 9021, "Invalid TTL. Must be between 60 and 86400 or 1 for automatic."
            )
        comment = body.get("comment")
        if comment is not None and (not isinstance(comment, str) or len(comment) > 100):
            return _error(400, 9020, "DNS record comment is too long.")
        if "proxied" in body and not isinstance(body["proxied"], bool):
            return _error(400, 1004, "proxied must be a boolean")
        full = self._normalize(name)
        for other in self.records.values():
            if other["id"] == record_id or other["name"] != full:
                continue
            pair = (rtype, other["type"])
            if "CNAME" in pair and all(t in _HOST_TYPES for t in pair):
                return _error(
                    400, 81053, "An A, AAAA, or CNAME record with that host already exists."
                )
            if other["type"] == rtype and other["content"].lower() == content.lower():
                return _error(400, 81058, "An identical record already exists.")
        return None

    def _make_record(self, body: Json, old: Json | None = None) -> Json:
        now = _now_iso()
        rtype = body["type"]
        comment = body.get("comment") or None
        record: Json = {
            "id": old["id"] if old else secrets.token_hex(16),
            "zone_id": self.zone_id,
            "zone_name": self.zone_name,
            "name": self._normalize(body["name"]),
            "type": rtype,
            "content": body["content"],
            "proxiable": rtype in _HOST_TYPES,
            "proxied": bool(body.get("proxied", False)) and rtype in _HOST_TYPES,
            "ttl": body.get("ttl", 1),
            "settings": {},
            "meta": {},
            "comment": comment,
            "tags": list(body.get("tags") or []),
            "created_on": old["created_on"] if old else now,
            "modified_on": now,
            "_seq": old["_seq"] if old else next(self._seq),
        }
        if comment is not None:
            record["comment_modified_on"] = now
        return record


def _check_endpoint(endpoint: str) -> None:
    if endpoint not in ENDPOINTS:
        raise ValueError(f"unknown endpoint {endpoint!r}; one of {sorted(ENDPOINTS)}")


def _public(record: Json) -> Json:
    return {k: v for k, v in record.items() if not k.startswith("_")}


def _ok(
    result: Any, *, result_info: Json | None = None, messages: list[Json] | None = None
) -> web.Response:
    if isinstance(result, dict):
        result = _public(result)
    elif isinstance(result, list):
        result = [_public(r) if isinstance(r, dict) else r for r in result]
    body: Json = {"success": True, "errors": [], "messages": messages or [], "result": result}
    if result_info is not None:
        body["result_info"] = result_info
    return web.json_response(body)


def _error(
    status: int, code: int, message: str, *, retry_after: float | None = None
) -> web.Response:
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = str(max(0, round(retry_after)))
    body = {
        "success": False,
        "errors": [{"code": code, "message": message}],
        "messages": [],
        "result": None,
    }
    return web.json_response(body, status=status, headers=headers)


def _missing() -> web.Response:
    return _error(404, 81044, "Record does not exist.")


def _equals(key: str, value: str) -> Callable[[Json], bool]:
    return lambda record: bool(record.get(key) == value)


def _filters(query: Any) -> Callable[[Json], bool]:
    """The record predicate for a list query: every filter must hold (or any, `match=any`)."""
    tests: list[Callable[[Json], bool]] = []

    def text(field_name: str, op: str, value: str) -> Callable[[Json], bool]:
        wanted = value.lower().rstrip(".") if field_name == "name" else value.lower()

        def test(record: Json) -> bool:
            have = (record.get(field_name) or "").lower()
            if op == "exact":
                return bool(have == wanted)
            if op == "contains":
                return wanted in have
            if op == "startswith":
                return bool(have.startswith(wanted))
            if op == "endswith":
                return bool(have.endswith(wanted))
            if op == "present":
                return bool(have)
            if op == "absent":
                return not have
            raise AssertionError(op)

        return test

    for key, value in query.items():
        if key in ("page", "per_page", "match", "order", "direction"):
            continue
        if key == "type":
            tests.append(_equals("type", value))
            continue
        field_name, _, op = key.partition(".")
        if key in ("name", "content", "comment"):
            op = "exact"
        if field_name not in ("name", "content", "comment") or op not in (
            "exact",
            "contains",
            "startswith",
            "endswith",
            "present",
            "absent",
        ):
            raise ValueError(f"unsupported filter {key!r}")
        if op in ("present", "absent") and field_name != "comment":
            raise ValueError(f"unsupported filter {key!r}")
        tests.append(text(field_name, op, value))
    if query.get("match", "all") == "any":
        return lambda r: not tests or any(t(r) for t in tests)
    return lambda r: all(t(r) for t in tests)


@pytest_asyncio.fixture(name="cloudflare_fake")
async def cloudflare_fake_fixture() -> AsyncIterator[CloudflareFake]:
    """`cloudflare_fake`: a started CloudflareFake on 127.0.0.1 (`.url` is the API base URL).

    Registered under the name `cloudflare_fake`; the function has another name so that a
    test module importing it does not shadow it with its parameters (ruff F811)."""
    fake = CloudflareFake()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()
