"""A fake Hetzner Cloud API (aiohttp, 127.0.0.1 only) speaking the real wire format.

Use it through the `hetzner_fake` fixture: add `"tests.fakes.hetzner"` to `pytest_plugins`
in tests/conftest.py, or import it into a test module with
`from tests.fakes.hetzner import hetzner_fake_fixture  # noqa: F401`:

    async def test_x(hetzner_fake: HetznerFake) -> None:
        provider = HetznerProvider(hetzner_fake.token, hetzner_fake.url, ("cpx22",), ("nbg1",))
        hetzner_fake.inject("POST /servers", 412, "resource_unavailable")
        ...

What it serves (under `/v1`, JSON bodies and error envelopes as in the OpenAPI document):
GET /server_types, GET /locations, GET /ssh_keys (filter `name`), GET /servers (filters
`name` and `label_selector` with `k=v`, `k==v`, `k!=v`, `k`, `!k`), POST /servers,
GET and DELETE /servers/{id}, GET /actions/{id}, GET /servers/{id}/actions/{action_id},
GET /pricing (tests/fakes/hetzner_pricing.py: `pricing_currency`, `pricing_vat_rate`,
`volume_price_per_gb_month` set what it says).
Volumes (tests/fakes/hetzner_volumes.py) and firewalls (tests/fakes/hetzner_firewalls.py)
plug into the same app, with the same faults, budget and envelopes; their actions run for
`action_seconds` and lock what they touch meanwhile (tests/fakes/hetzner_actions.py).
Lists paginate with `page`/`per_page` (default 25, at most 50) and `meta.pagination`.
Every reply carries `RateLimit-Limit`/`RateLimit-Remaining`/`RateLimit-Reset` and
`X-Correlation-Id`. The budget is a token bucket as the real API's: one request used per
call, `rate_limit_limit` regained per hour evenly (one per second at 3600), and
`RateLimit-Reset` is when the bucket is FULL again. With `enforce_rate_limit` (on by
default) a call finding the bucket empty gets 429 `rate_limit_exceeded`.
A request without `Authorization: Bearer <fake.token>` gets 401 `unauthorized`.

Catalogue (mutable lists of API objects, change them per test): server types cpx22
(2 vCPU, 4 GB, 80 GB), cpx32 (4, 8, 160), cx23 (2, 4, 40), and cx22 (deprecated in every
location, no longer orderable); locations nbg1, fsn1, hel1 (EU) and ash, hil (US); CX
types are not offered in ash/hil. Prices differ per location. SSH keys: `ops`.

State and inspection:
- `servers`: {id: server object}; edit freely (e.g. `servers[i]["status"] = "running"`).
- `create_requests`: the JSON body of every accepted POST /servers (user_data, labels...).
- `calls`: every request as `Call(method, endpoint, query, body, status, correlation_id)`;
  `count(endpoint)` counts them. An endpoint is named like "POST /servers" or
  "DELETE /servers/{id}" (see `ENDPOINTS`).
- `add_server(name, labels, ...)`: seed an existing server. Deleting a server detaches
  its volumes (they are kept) and removes it from the firewalls applied to it directly.
- `volumes`, `firewalls`: {id: object}, as the API shows them.
- `action_seconds`: how long volume and firewall actions run (0: over at once; `math.inf`:
  until `finish_actions()`); `action_until`: {action id: epoch seconds it runs until}.
- `rate_limit_remaining`, `rate_limit_limit`: the current budget (set them to simulate).

Injection (each applies to the next `times` calls of that endpoint, in order queued):
- `inject(endpoint, status, code, message=None, times=1, retry_after=None, after=0)`:
  let `after` calls through, then answer `times` calls with the error envelope, e.g. (412, "resource_unavailable"), (422, "placement_error"),
  (403, "resource_limit_exceeded"), (429, "rate_limit_exceeded": the bucket is emptied,
  so headers say remaining 0 and RateLimit-Reset = when it is full again, an hour at
  3600/hour; `retry_after` overrides that reset time), (500, "server_error"),
  (503, "unavailable").
- `chaos(rate, seed, slow=..., lost=..., kinds=CHAOS_KINDS)`: from now on each call,
  with probability `rate`, meets one fault drawn from `kinds`: "500", "503", "429" (a
  drained bucket), "slow" (`slow` s before handling) or "lost" (handled, then held
  `lost` s: set it above the client's timeout). `chaos(0)` stops it. Each call records its fault.
- `delay(endpoint, seconds, times=1, after_effect=False)`: sleep before handling; with
  `after_effect=True` the call takes effect first (server stored or deleted), then the
  reply is held back: a client timeout after the effect.
- `timeout_after_store(seconds=5)`: shorthand for POST /servers, after_effect=True.
- `clear_faults()`: drop whatever is still queued (the outage is over).
- `fail_action(code="action_failed", message=..., times=1)`: the next create stores the
  server but its create_server action is already in status "error".
Sleeps end early when the fake closes, so teardown never waits for them.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import random
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from control.capacity.providers.hetzner import HetznerProvider
from control.capacity.providers.hetzner_ratelimit import RateBudget
from control.settings import Settings
from shared.version import __version__
from tests.fakes.common import endpoint_and_body

ENDPOINTS = frozenset(
    {
        "GET /server_types",
        "GET /locations",
        "GET /ssh_keys",
        "GET /servers",
        "POST /servers",
        "GET /servers/{id}",
        "DELETE /servers/{id}",
        "GET /actions/{id}",
        "GET /servers/{id}/actions/{action_id}",
    }
)

Json = dict[str, Any]
CHAOS_KINDS = ("500", "503", "429", "slow", "lost")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_BODY = web.RequestKey("body", object)  # the parsed JSON body, read once by the middleware
_PAST = "2025-12-31T00:00:00Z"  # cx22's unavailable_after: already reached
_ANNOUNCED = "2025-10-16T09:00:00Z"
_IMAGES = ("ubuntu-24.04", "debian-12")


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_locations() -> list[Json]:
    def loc(id_: int, name: str, desc: str, country: str, city: str, zone: str) -> Json:
        return {
            "id": id_,
            "name": name,
            "description": desc,
            "country": country,
            "city": city,
            "latitude": 50.0,
            "longitude": 10.0,
            "network_zone": zone,
        }

    return [
        loc(1, "fsn1", "Falkenstein DC Park 1", "DE", "Falkenstein", "eu-central"),
        loc(2, "nbg1", "Nuremberg DC Park 1", "DE", "Nuremberg", "eu-central"),
        loc(3, "hel1", "Helsinki DC Park 1", "FI", "Helsinki", "eu-central"),
        loc(4, "ash", "Ashburn, VA", "US", "Ashburn, VA", "us-east"),
        loc(5, "hil", "Hillsboro, OR", "US", "Hillsboro, OR", "us-west"),
    ]


_LOCATION_IDS = {loc["name"]: loc["id"] for loc in default_locations()}
_EU = ("fsn1", "nbg1", "hel1")
_US = ("ash", "hil")


def _money(value: float) -> Json:
    return {"net": f"{value:.4f}", "gross": f"{value * 1.19:.4f}"}


def _server_type(
    id_: int,
    name: str,
    cores: int,
    memory: float,
    disk: int,
    hourly: dict[str, float],
    cpu_type: str = "shared",
    deprecated: bool = False,
) -> Json:
    deprecation = {"announced": _ANNOUNCED, "unavailable_after": _PAST} if deprecated else None
    return {
        "id": id_,
        "name": name,
        "description": name.upper(),
        "cores": cores,
        "memory": memory,
        "disk": disk,
        "deprecated": deprecated,
        "deprecation": deprecation,
        "prices": [
            {
                "location": location,
                "price_hourly": _money(price),
                "price_monthly": _money(price * 730),
                "included_traffic": 20 * 1024**4 if location in _EU else 1024**4,
                "price_per_tb_traffic": _money(1.0 if location in _EU else 12.0),
            }
            for location, price in hourly.items()
        ],
        "storage_type": "local",
        "cpu_type": cpu_type,
        "category": "Shared vCPU",
        "architecture": "x86",
        "locations": [
            {
                "id": _LOCATION_IDS[location],
                "name": location,
                "deprecation": deprecation,
                "available": not deprecated,
                "recommended": not deprecated,
            }
            for location in hourly
        ],
    }


def default_server_types() -> list[Json]:
    def everywhere(eu: float, us: float) -> dict[str, float]:
        return {**dict.fromkeys(_EU, eu), **dict.fromkeys(_US, us)}

    return [
        _server_type(22, "cx22", 2, 4, 40, dict.fromkeys(_EU, 0.0060), deprecated=True),
        _server_type(108, "cpx22", 2, 4, 80, everywhere(0.0120, 0.0144)),
        _server_type(109, "cpx32", 4, 8, 160, everywhere(0.0216, 0.0256)),
        _server_type(114, "cx23", 2, 4, 40, dict.fromkeys(_EU, 0.0056)),
    ]


def host_sized_type() -> Json:
    """A type with exactly this machine's cores and memory, for end-to-end tests whose
    "server" is an agent process on this machine (its honest report must fit)."""
    import os

    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    everywhere = dict.fromkeys((*_EU, *_US), 0.05)
    return _server_type(
        900, "cxhost", os.cpu_count() or 1, round(memory_gb, 1) + 1, 4096, everywhere
    )


@dataclass
class Call:
    method: str
    endpoint: str  # e.g. "GET /servers/{id}"; "" when no route matched
    query: dict[str, str]
    body: Any
    status: int = 0
    correlation_id: str = ""
    at: float = 0.0  # epoch seconds when the request arrived
    path: str = ""  # e.g. /v1/servers/1001
    fault: str = ""  # what chaos() did to it, if anything


@dataclass
class _Fault:
    status: int
    code: str
    message: str
    retry_after: float | None


@dataclass
class _Delay:
    seconds: float
    after_effect: bool


@dataclass
class HetznerFake:
    token: str = field(default_factory=lambda: "fake-hcloud-" + secrets.token_hex(16))
    server_types: list[Json] = field(default_factory=default_server_types)
    locations: list[Json] = field(default_factory=default_locations)
    ssh_keys: list[Json] = field(
        default_factory=lambda: [
            {"id": 7, "name": "ops", "fingerprint": "b7:2f:30:a0:2f:6c:58:6c", "labels": {}}
        ]
    )
    servers: dict[int, Json] = field(default_factory=dict)
    volumes: dict[int, Json] = field(default_factory=dict)
    firewalls: dict[int, Json] = field(default_factory=dict)
    actions: dict[int, Json] = field(default_factory=dict)
    action_until: dict[int, float] = field(default_factory=dict)
    action_seconds: float = 0.0
    create_requests: list[Json] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    rate_limit_limit: int = 3600
    rate_limit_remaining: int = 3600
    pricing_currency: str = "EUR"
    pricing_vat_rate: str = "19.00"
    volume_price_per_gb_month: float | None = 0.044  # net; None: no `volume` in /pricing
    enforce_rate_limit: bool = True
    url: str = ""  # the API endpoint, e.g. http://127.0.0.1:PORT/v1, once started

    def __post_init__(self) -> None:
        self._faults: dict[str, deque[_Fault | None]] = {}  # None: let one call through
        self._delays: dict[str, deque[_Delay]] = {}
        self._action_failures: deque[tuple[str, str]] = deque()
        self._ids = itertools.count(1001)
        self._action_ids = itertools.count(5001)
        self._closing = asyncio.Event()
        self._server: TestServer | None = None
        self._refilled_at = time.time()
        self._chaos_rate = 0.0
        self._chaos_rng = random.Random(0)
        self._chaos_slow = 0.0
        self._chaos_lost = 0.0
        self._chaos_kinds = CHAOS_KINDS

    # -- injection API --------------------------------------------------------------

    def inject(
        self,
        endpoint: str,
        status: int,
        code: str,
        message: str | None = None,
        *,
        times: int = 1,
        retry_after: float | None = None,
        after: int = 0,
    ) -> None:
        _check_endpoint(endpoint)
        fault = _Fault(status, code, message or f"injected {code}", retry_after)
        self._faults.setdefault(endpoint, deque()).extend([None] * after + [fault] * times)

    def delay(
        self, endpoint: str, seconds: float, *, times: int = 1, after_effect: bool = False
    ) -> None:
        _check_endpoint(endpoint)
        self._delays.setdefault(endpoint, deque()).extend([_Delay(seconds, after_effect)] * times)

    def chaos(
        self,
        rate: float,
        seed: int = 0,
        *,
        slow: float = 0.5,
        lost: float = 5.0,
        kinds: tuple[str, ...] = CHAOS_KINDS,
    ) -> None:
        self._chaos_kinds = kinds
        self._chaos_rate = rate
        self._chaos_rng = random.Random(seed)
        self._chaos_slow = slow
        self._chaos_lost = lost

    def clear_faults(self) -> None:
        """Drops every queued injected fault and delay: the API is healthy again."""
        self._faults.clear()
        self._delays.clear()

    def timeout_after_store(self, seconds: float = 5.0) -> None:
        self.delay("POST /servers", seconds, after_effect=True)

    def fail_action(
        self,
        code: str = "action_failed",
        message: str = "server creation failed",
        *,
        times: int = 1,
    ) -> None:
        self._action_failures.extend([(code, message)] * times)

    def finish_actions(self) -> None:
        """Ends every action's running window now: the resources they locked are free."""
        self.action_until = dict.fromkeys(self.action_until, 0.0)

    def count(self, endpoint: str) -> int:
        _check_endpoint(endpoint)
        return sum(1 for call in self.calls if call.endpoint == endpoint)

    def add_server(
        self,
        name: str,
        labels: dict[str, str] | None = None,
        server_type: str = "cpx22",
        location: str = "nbg1",
        status: str = "running",
    ) -> Json:
        server = self._make_server(name, labels or {}, server_type, location, "ubuntu-24.04")
        server["status"] = status
        self.servers[server["id"]] = server
        return server

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._server = TestServer(self.app(), host="127.0.0.1")
        await self._server.start_server()
        self.url = str(self._server.make_url("/v1"))

    async def close(self) -> None:
        self._closing.set()
        if self._server is not None:
            await self._server.close()
            self._server = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/v1/server_types", self._list_server_types)
        app.router.add_get("/v1/locations", self._list_locations)
        app.router.add_get("/v1/ssh_keys", self._list_ssh_keys)
        app.router.add_get("/v1/servers", self._list_servers)
        app.router.add_post("/v1/servers", self._create_server)
        app.router.add_get("/v1/servers/{id}", self._get_server)
        app.router.add_delete("/v1/servers/{id}", self._delete_server)
        app.router.add_get("/v1/actions/{id}", self._get_action)
        app.router.add_get("/v1/servers/{id}/actions/{action_id}", self._get_action)
        # They import this module.
        from tests.fakes import hetzner_firewalls, hetzner_pricing, hetzner_volumes

        hetzner_volumes.register(app, self)
        hetzner_firewalls.register(app, self)
        hetzner_pricing.register(app, self)
        return app

    # -- plumbing ---------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        endpoint, body = await endpoint_and_body(request, "/v1")
        call = Call(
            request.method, endpoint, dict(request.query), body, at=time.time(), path=request.path
        )
        self.calls.append(call)
        self._refill()
        empty = self.rate_limit_remaining < 1
        self.rate_limit_remaining = max(0, self.rate_limit_remaining - 1)
        reset_at: float | None = None
        if empty and self.enforce_rate_limit:
            response: web.StreamResponse = _error(
                429, "rate_limit_exceeded", "limit of requests per hour reached"
            )
        else:
            response, reset_at = await self._answer(request, handler, endpoint, body, call)
        if reset_at is None:
            per_request = 3600.0 / max(self.rate_limit_limit, 1)
            reset_at = (
                time.time() + (self.rate_limit_limit - self.rate_limit_remaining) * per_request
            )
        call.status = response.status
        call.correlation_id = secrets.token_hex(8)
        response.headers["X-Correlation-Id"] = call.correlation_id
        response.headers["RateLimit-Limit"] = str(self.rate_limit_limit)
        response.headers["RateLimit-Remaining"] = str(self.rate_limit_remaining)
        response.headers["RateLimit-Reset"] = str(int(reset_at))
        return response

    def _refill(self) -> None:
        """The bucket regains `rate_limit_limit` requests per hour, evenly."""
        now = time.time()
        gained = int((now - self._refilled_at) * self.rate_limit_limit / 3600.0)
        if gained > 0:
            self.rate_limit_remaining = min(
                self.rate_limit_limit, self.rate_limit_remaining + gained
            )
            self._refilled_at += gained * 3600.0 / self.rate_limit_limit
        if self.rate_limit_remaining >= self.rate_limit_limit:
            self._refilled_at = now

    def _chaos_fault(self, endpoint: str) -> _Fault | _Delay | None:
        if self._chaos_rate <= 0 or self._chaos_rng.random() >= self._chaos_rate:
            return None
        kind = self._chaos_rng.choice(self._chaos_kinds)
        if kind == "500":
            return _Fault(500, "server_error", "chaos: internal error", None)
        if kind == "503":
            return _Fault(503, "unavailable", "chaos: service unavailable", None)
        if kind == "429":
            return _Fault(429, "rate_limit_exceeded", "chaos: limit reached", None)
        if kind == "slow":
            return _Delay(self._chaos_slow, after_effect=False)
        return _Delay(self._chaos_lost, after_effect=True)

    async def _answer(
        self, request: web.Request, handler: Handler, endpoint: str, body: Any, call: Call
    ) -> tuple[web.StreamResponse, float | None]:
        """The reply, and for an injected 429 with `retry_after` the reset time."""
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _error(401, "unauthorized", "unable to authenticate"), None
        if not endpoint:
            return _error(404, "not_found", "not found"), None
        response: web.StreamResponse
        faults = self._faults.get(endpoint)
        chaos = self._chaos_fault(endpoint)
        if chaos is not None:
            call.fault = (
                f"{chaos.status}"
                if isinstance(chaos, _Fault)
                else ("lost" if chaos.after_effect else "slow")
            )
        fault = faults.popleft() if faults else (chaos if isinstance(chaos, _Fault) else None)
        if fault is not None:
            response = _error(fault.status, fault.code, fault.message)
            if fault.status != 429:
                return response, None
            self.rate_limit_remaining = 0  # a 429 means the bucket is empty
            self._refilled_at = time.time()
            reset_at = None if fault.retry_after is None else time.time() + fault.retry_after
            return response, reset_at
        request[_BODY] = body
        delays = self._delays.get(endpoint)
        delay = delays.popleft() if delays else (chaos if isinstance(chaos, _Delay) else None)
        if delay is not None and not delay.after_effect:
            await self._sleep(delay.seconds)
        response = await handler(request)
        if delay is not None and delay.after_effect:
            await self._sleep(delay.seconds)
        return response, None

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._closing.wait(), timeout=seconds)
        except TimeoutError:
            pass

    # -- handlers ---------------------------------------------------------------------

    async def _list_server_types(self, request: web.Request) -> web.StreamResponse:
        return _page(request, "server_types", _by_name(request, self.server_types))

    async def _list_locations(self, request: web.Request) -> web.StreamResponse:
        return _page(request, "locations", _by_name(request, self.locations))

    async def _list_ssh_keys(self, request: web.Request) -> web.StreamResponse:
        return _page(request, "ssh_keys", _by_name(request, self.ssh_keys))

    async def _list_servers(self, request: web.Request) -> web.StreamResponse:
        return _filtered_page(request, "servers", self.servers.values())

    async def _create_server(self, request: web.Request) -> web.StreamResponse:
        body = request[_BODY]
        if not isinstance(body, dict):
            return _error(400, "json_error", "invalid JSON in request body")
        problem = self._check_create(body)
        if problem is not None:
            return problem
        self.create_requests.append(body)
        server = self._make_server(
            body["name"],
            dict(body.get("labels") or {}),
            body["server_type"],
            body["location"],
            body["image"],
        )
        self.servers[server["id"]] = server
        failure = self._action_failures.popleft() if self._action_failures else None
        action = self._action("create_server", server["id"], failure)
        next_actions = (
            []
            if body.get("start_after_create") is False
            else [self._action("start_server", server["id"], None)]
        )
        return web.json_response(
            {
                "server": server,
                "action": action,
                "next_actions": next_actions,
                "root_password": None if body.get("ssh_keys") else secrets.token_urlsafe(15),
            },
            status=201,
        )

    def _check_create(self, body: Json) -> web.Response | None:
        name = body.get("name")
        if not isinstance(name, str) or not name:
            return _invalid("name", "is required")
        if any(s["name"] == name for s in self.servers.values()):
            return _error(409, "uniqueness_error", "server name is already used", _field("name"))
        types = {t["name"]: t for t in self.server_types}
        server_type = types.get(str(body.get("server_type")))
        if server_type is None:
            return _invalid("server_type", "server type not found")
        locations = {loc["name"] for loc in self.locations}
        location = body.get("location")
        if location not in locations:
            return _invalid("location", "location not found")
        offer = next((o for o in server_type["locations"] if o["name"] == location), None)
        if offer is None:
            return _invalid("server_type", f"server type not supported in location {location}")
        deprecation = offer["deprecation"]
        if deprecation is not None and deprecation["unavailable_after"] <= _now_iso():
            return _invalid("server_type", "server type is deprecated and no longer available")
        if not offer["available"]:
            return _error(412, "resource_unavailable", "server type is currently unavailable")
        if body.get("image") not in _IMAGES:
            return _invalid("image", "image not found")
        known_keys = {k["name"] for k in self.ssh_keys} | {str(k["id"]) for k in self.ssh_keys}
        for key in body.get("ssh_keys") or []:
            if str(key) not in known_keys:
                return _invalid("ssh_keys", f"SSH key {key} not found")
        labels = body.get("labels") or {}
        if not isinstance(labels, dict) or any(
            not isinstance(v, str) or len(v) > 63 or len(k) > 63 for k, v in labels.items()
        ):
            return _invalid("labels", "invalid label")
        user_data = body.get("user_data")
        if user_data is not None and len(str(user_data).encode()) > 32 * 1024:
            return _invalid("user_data", "is too long")
        return None

    async def _get_server(self, request: web.Request) -> web.StreamResponse:
        server = self.servers.get(_int(request.match_info["id"]))
        if server is None:
            return _error(404, "not_found", "server not found")
        return web.json_response({"server": server})

    async def _delete_server(self, request: web.Request) -> web.StreamResponse:
        server_id = _int(request.match_info["id"])
        if self.servers.pop(server_id, None) is None:
            return _error(404, "not_found", "server not found")
        for volume in self.volumes.values():  # the real API detaches them and keeps them
            if volume["server"] == server_id:
                volume["server"] = None
        for firewall in self.firewalls.values():
            firewall["applied_to"] = [
                a for a in firewall["applied_to"] if a.get("server", {}).get("id") != server_id
            ]
        return web.json_response({"action": self._action("delete_server", server_id, None)})

    async def _get_action(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info.get("action_id") or request.match_info["id"]
        action = self.actions.get(_int(key))
        if action is None:
            return _error(404, "not_found", "action not found")
        running_until = self.action_until.get(action["id"], 0.0)  # see hetzner_actions
        if action["status"] == "running" and running_until <= time.time():
            # polled actions finish on the first look, once their window is over
            action.update(status="success", progress=100, finished=_now_iso())
        return web.json_response({"action": action})

    # -- objects ----------------------------------------------------------------------

    def _make_server(
        self, name: str, labels: dict[str, str], type_name: str, location: str, image: str
    ) -> Json:
        server_id = next(self._ids)
        server_type = next(t for t in self.server_types if t["name"] == type_name)
        loc = next(x for x in self.locations if x["name"] == location)
        return {
            "id": server_id,
            "name": name,
            "status": "initializing",
            "created": _now_iso(),
            "public_net": {
                "ipv4": {
                    "id": server_id + 100000,
                    "ip": f"203.0.113.{server_id % 250 + 1}",
                    "blocked": False,
                    "dns_ptr": f"static.{server_id}.example.com",
                },
                "ipv6": {
                    "id": server_id + 200000,
                    "ip": f"2001:db8:{server_id:x}::/64",
                    "blocked": False,
                    "dns_ptr": [],
                },
                "floating_ips": [],
                "firewalls": [],
            },
            "private_net": [],
            "server_type": server_type,
            "location": loc,
            "datacenter": {
                "id": loc["id"],
                "name": f"{location}-dc1",
                "description": f"{loc['description']} DC 1",
                "location": loc,
                "server_types": {"supported": [], "available": [], "available_for_migration": []},
            },
            "image": {
                "id": 161547269 if image == "ubuntu-24.04" else 114690387,
                "type": "system",
                "status": "available",
                "name": image,
                "description": image,
                "image_size": None,
                "disk_size": 5,
                "created": "2024-04-25T10:00:00Z",
                "created_from": None,
                "bound_to": None,
                "os_flavor": image.split("-")[0],
                "os_version": image.split("-")[1],
                "rapid_deploy": True,
                "protection": {"delete": False},
                "deprecated": None,
                "deleted": None,
                "labels": {},
                "architecture": "x86",
            },
            "iso": None,
            "rescue_enabled": False,
            "locked": False,
            "backup_window": None,
            "outgoing_traffic": 0,
            "ingoing_traffic": 0,
            "included_traffic": 21990232555520,
            "protection": {"delete": False, "rebuild": False},
            "labels": labels,
            "volumes": [],
            "load_balancers": [],
            "primary_disk_size": server_type["disk"],
            "placement_group": None,
        }

    def _action(self, command: str, server_id: int, failure: tuple[str, str] | None) -> Json:
        action_id = next(self._action_ids)
        action = {
            "id": action_id,
            "command": command,
            "status": "error" if failure else "running",
            "progress": 100 if failure else 0,
            "started": _now_iso(),
            "finished": _now_iso() if failure else None,
            "resources": [{"id": server_id, "type": "server"}],
            "error": {"code": failure[0], "message": failure[1]} if failure else None,
        }
        self.actions[action_id] = action
        return action


def _check_endpoint(endpoint: str) -> None:
    from tests.fakes.hetzner_firewalls import FIREWALL_ENDPOINTS  # it imports this module
    from tests.fakes.hetzner_pricing import PRICING_ENDPOINTS
    from tests.fakes.hetzner_volumes import VOLUME_ENDPOINTS

    known = ENDPOINTS | VOLUME_ENDPOINTS | FIREWALL_ENDPOINTS | PRICING_ENDPOINTS
    if endpoint not in known:
        raise ValueError(f"unknown endpoint {endpoint!r}; one of {sorted(known)}")


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        return -1


def _error(status: int, code: str, message: str, details: Json | None = None) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message, "details": details}}, status=status
    )


def _field(name: str, message: str | None = None) -> Json:
    entry: Json = {"name": name}
    if message is not None:
        entry["messages"] = [message]
    return {"fields": [entry]}


def _invalid(name: str, message: str) -> web.Response:
    return _error(
        422, "invalid_input", f"invalid input in field '{name}': {message}", _field(name, message)
    )


class _Routes(Protocol):
    fake: HetznerFake


R = TypeVar("R", bound=_Routes)
FoundHandler = Callable[[R, web.Request, Json], Awaitable[web.StreamResponse]]
RouteHandler = Callable[[R, web.Request], Awaitable[web.StreamResponse]]


def _found(
    kind: str, table: Callable[[HetznerFake], dict[int, Json]]
) -> Callable[[FoundHandler[R]], RouteHandler[R]]:
    """A route method on /<kind>s/{id}: it gets the object the path names, and a missing one
    is answered 404 `not_found` ("<kind> not found") before the method runs."""

    def decorate(handler: FoundHandler[R]) -> RouteHandler[R]:
        @functools.wraps(handler)
        async def route(routes: R, request: web.Request) -> web.StreamResponse:
            found = table(routes.fake).get(_int(request.match_info["id"]))
            if found is None:
                return _error(404, "not_found", f"{kind} not found")
            return await handler(routes, request, found)

        return route

    return decorate


def _by_name(request: web.Request, items: list[Json]) -> list[Json]:
    name = request.query.get("name")
    return [item for item in items if name is None or item["name"] == name]


def _page(request: web.Request, key: str, items: list[Json]) -> web.Response:
    try:
        page = int(request.query.get("page", "1"))
        per_page = int(request.query.get("per_page", "25"))
    except ValueError:
        return _error(400, "invalid_input", "page and per_page must be integers")
    if page < 1 or per_page < 1:
        return _error(400, "invalid_input", "page and per_page must be positive")
    per_page = min(per_page, 50)
    last = max(1, -(-len(items) // per_page))
    chunk = items[(page - 1) * per_page : page * per_page]
    pagination = {
        "page": page,
        "per_page": per_page,
        "previous_page": page - 1 if page > 1 else None,
        "next_page": page + 1 if page < last else None,
        "last_page": last,
        "total_entries": len(items),
    }
    return web.json_response({key: chunk, "meta": {"pagination": pagination}})


def _filtered_page(
    request: web.Request,
    key: str,
    items: Iterable[Json],
    keep: Callable[[Json], bool] | None = None,
) -> web.Response:
    """A labelled resource's list (servers, volumes, firewalls): by id, narrowed by the
    query's `name` and `label_selector` (a bad one is 400 `invalid_input`) and by `keep`
    (a resource's own filters), then paginated."""
    selected = sorted(items, key=lambda item: int(item["id"]))
    if keep is not None:
        selected = [item for item in selected if keep(item)]
    if "name" in request.query:
        selected = [item for item in selected if item["name"] == request.query["name"]]
    selector = request.query.get("label_selector")
    if selector:
        try:
            match = _parse_selector(selector)
        except ValueError as exc:
            return _error(400, "invalid_input", f"invalid label_selector: {exc}")
        selected = [item for item in selected if match(item["labels"])]
    return _page(request, key, selected)


def _parse_selector(selector: str) -> Callable[[dict[str, str]], bool]:
    """`k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated (all must hold)."""
    terms: list[tuple[str, str, str]] = []  # (operator, key, value)
    for term in (t.strip() for t in selector.split(",")):
        if not term or "(" in term or " " in term:
            raise ValueError(f"unsupported term {term!r}")
        if "!=" in term:
            key, value = term.split("!=", 1)
            terms.append(("!=", key, value))
        elif "=" in term:
            key, value = term.split("==", 1) if "==" in term else term.split("=", 1)
            terms.append(("==", key, value))
        elif term.startswith("!"):
            terms.append(("absent", term[1:], ""))
        else:
            terms.append(("present", term, ""))

    def holds(labels: dict[str, str], op: str, key: str, value: str) -> bool:
        if op == "==":
            return labels.get(key) == value
        if op == "!=":
            return labels.get(key) != value
        return (key in labels) == (op == "present")

    return lambda labels: all(holds(labels, *term) for term in terms)


@pytest_asyncio.fixture(name="hetzner_fake")
async def hetzner_fake_fixture() -> AsyncIterator[HetznerFake]:
    """`hetzner_fake`: a started HetznerFake on 127.0.0.1 (`.url` is the API endpoint).

    Registered under the name `hetzner_fake`; the function has another name so that a
    test module importing it does not shadow it with its parameters (ruff F811)."""
    fake = HetznerFake()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


def provider_with_timeout(
    timeout: float, budget: RateBudget | None = None
) -> Callable[[Settings], HetznerProvider]:
    """A provider factory for the app (like control.capacity.providers.build_provider), with a
    short timeout so tests of slow or lost replies finish quickly, and optionally a rate
    budget on the test's clock."""

    def build(settings: Settings) -> HetznerProvider:
        return HetznerProvider(
            settings.hetzner_api_token,
            settings.hetzner_api_endpoint,
            settings.hetzner_server_types,
            settings.hetzner_locations,
            timeout=timeout,
            budget=budget,
        )

    return build


def fleet_settings(fake: HetznerFake, dist: str) -> dict[str, Any]:
    """Settings for a control plane whose provider is this fake, for tests that trigger the
    autoscaler's runs themselves (its interval job is an hour apart): locations nbg1 and fsn1,
    at most 10 servers and 2 creates a run, no warm headroom. `dist` is from `agent_dist`."""
    return {
        "provider": "hetzner",
        "hetzner_api_token": fake.token,
        "hetzner_api_endpoint": fake.url,
        "hetzner_locations": ("nbg1", "fsn1"),
        "agent_dist_dir": dist,
        "autoscale_interval": 3600.0,
        "max_servers": 10,
        "max_creates_per_run": 2,
        "warm_headroom": 0,
    }


def agent_dist(directory: Path) -> str:
    """A stand-in agent wheel where the control plane looks for one (AGENT_DIST_DIR)."""
    directory.mkdir(exist_ok=True)
    (directory / f"clawfleet-{__version__}-py3-none-any.whl").write_bytes(b"not really a wheel")
    return str(directory)
