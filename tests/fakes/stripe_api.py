"""A fake Stripe API (aiohttp, 127.0.0.1 only) for subscription re-fetches.

Use it through the `stripe_fake` fixture: add `"tests.fakes.stripe_api"` to
`pytest_plugins` in tests/conftest.py, or import it into a test module with
`from tests.fakes.stripe_api import stripe_fake_fixture  # noqa: F401`:

    async def test_x(stripe_fake: StripeFake) -> None:
        stripe_fake.subscriptions["sub_1"] = subscription(id_="sub_1", status="past_due")
        inbox = StripeInbox(store, secret, api_key=stripe_fake.api_key, api_base=stripe_fake.url)

`url` is an API base for the real `stripe` library
(`StripeClient(key, base_addresses={"api": fake.url})`): the library appends `/v1/...`.

What it serves, in Stripe's wire format: `GET /v1/subscriptions/{id}` answers the
object in `subscriptions[id]` (a plain dict, e.g. `tests.stripe_events.subscription()`),
with `Request-Id` and `Stripe-Version` headers. Errors use Stripe's envelope
`{"error": {"type", "code", "message", "param", "doc_url"}}`: 404 `resource_missing`
for an unknown id; 401 for a missing or wrong `Authorization: Bearer <api_key>` (the
message shows the key masked as Stripe does). Any other route: 404 like Stripe's.

`POST /v1/billing_portal/sessions` (form-encoded `customer`, `return_url`) answers a
`billing_portal.session` whose `url` is on billing.stripe.com, for a customer listed in
`customers`; 400 `parameter_missing` without `customer`, 400 `resource_missing` for
another. Each created session is kept in `billing_portal_sessions`.

Checkout Sessions (create, retrieve, expire; `checkout.prices` lists the prices that
exist, `checkout.complete(...)` is a buyer paying): tests/fakes/stripe_checkout.py.
Prices with their Products (`GET /v1/prices/{id}`, `expand[]=product`; `prices.add(...)`):
tests/fakes/stripe_prices.py.

Inspection: `calls` (every request as `Call(method, path, status)`; the Authorization
header is never recorded); `count(path=None)`.
Injection (each for the next `times` requests, in order queued):
- `inject(status, type_="api_error", message=None, times=1)`: answer an error
  envelope, e.g. 500 api_error, 429 rate_limit (`code: "rate_limit"`).
- `delay(seconds, times=1)`: hold the reply back (a slow or hung API).
Sleeps end early when the fake closes, so teardown never waits for them.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.fakes.stripe_checkout import CheckoutSessions
from tests.fakes.stripe_prices import Prices

Json = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
API_VERSION = "2025-08-27.basil"


@dataclass
class Call:
    method: str
    path: str
    status: int = 0


@dataclass
class _Fault:
    status: int
    type_: str
    message: str


@dataclass
class StripeFake:
    api_key: str = field(default_factory=lambda: "sk_test_fake_" + secrets.token_hex(16))
    url: str = ""  # the API base, e.g. http://127.0.0.1:PORT, once started
    subscriptions: dict[str, Json] = field(default_factory=dict)
    checkout: CheckoutSessions = field(default_factory=CheckoutSessions)
    prices: Prices = field(default_factory=Prices)  # tests/fakes/stripe_prices.py
    customers: set[str] = field(default_factory=set)
    billing_portal_sessions: list[Json] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    _faults: deque[_Fault] = field(default_factory=deque)
    _delays: deque[float] = field(default_factory=deque)
    _server: TestServer | None = None
    _closed: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/v1/subscriptions/{id}", self._get_subscription)
        self.checkout.routes(app)  # Checkout Sessions: tests/fakes/stripe_checkout.py
        self.prices.routes(app)  # Prices (the sign-up page's plan cards)
        app.router.add_post("/v1/billing_portal/sessions", self._create_billing_portal_session)
        return app

    async def start(self) -> None:
        self._server = TestServer(self.app(), host="127.0.0.1")
        await self._server.start_server()
        self.url = str(self._server.make_url("")).rstrip("/")

    async def close(self) -> None:
        self._closed.set()
        if self._server is not None:
            server, self._server = self._server, None
            await server.close()

    def count(self, path: str | None = None) -> int:
        return sum(1 for call in self.calls if path is None or call.path == path)

    def inject(
        self, status: int, type_: str = "api_error", message: str | None = None, times: int = 1
    ) -> None:
        text = message or f"Injected error ({status})"
        self._faults.extend(_Fault(status, type_, text) for _ in range(times))

    def delay(self, seconds: float, times: int = 1) -> None:
        self._delays.extend(seconds for _ in range(times))

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        call = Call(request.method, request.path)
        self.calls.append(call)
        response = await self._dispatch(request, handler)
        call.status = response.status
        response.headers["Request-Id"] = "req_" + secrets.token_hex(7)
        response.headers["Stripe-Version"] = request.headers.get("Stripe-Version", API_VERSION)
        return response

    async def _dispatch(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._delays:
            await self._sleep(self._delays.popleft())
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return _error(
                401,
                "invalid_request_error",
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY').",
            )
        presented = auth.removeprefix("Bearer ")
        if presented != self.api_key:
            return _error(
                401,
                "invalid_request_error",
                f"Invalid API Key provided: {_mask(presented)}",
                code="api_key_invalid",
            )
        if self._faults:
            fault = self._faults.popleft()
            code = "rate_limit" if fault.status == 429 else None
            return _error(fault.status, fault.type_, fault.message, code=code)
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return _error(
                404,
                "invalid_request_error",
                f"Unrecognized request URL ({request.method}: {request.path}).",
            )

    async def _sleep(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._closed.wait()
        except TimeoutError:
            pass

    async def _get_subscription(self, request: web.Request) -> web.StreamResponse:
        sub_id = request.match_info["id"]
        sub = self.subscriptions.get(sub_id)
        if sub is None:
            return _error(
                404,
                "invalid_request_error",
                f"No such subscription: '{sub_id}'",
                code="resource_missing",
                param="id",
            )
        return web.json_response(sub)

    async def _create_billing_portal_session(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        customer = form.get("customer")
        if not isinstance(customer, str) or not customer:
            return _error(
                400,
                "invalid_request_error",
                "Missing required param: customer.",
                code="parameter_missing",
                param="customer",
            )
        if customer not in self.customers:
            return _error(
                400,
                "invalid_request_error",
                f"No such customer: '{customer}'",
                code="resource_missing",
                param="customer",
            )
        session: Json = {
            "id": "bps_" + secrets.token_hex(12),
            "object": "billing_portal.session",
            "configuration": "bpc_" + secrets.token_hex(12),
            "created": int(time.time()),
            "customer": customer,
            "flow": None,
            "livemode": False,
            "locale": None,
            "on_behalf_of": None,
            "return_url": form.get("return_url"),
            "url": "https://billing.stripe.com/p/session/test_" + secrets.token_urlsafe(24),
        }
        self.billing_portal_sessions.append(session)
        return web.json_response(session)


def _mask(key: str) -> str:
    # Stripe shows the prefix and the last four characters only.
    prefix = key[:8] if key.startswith(("sk_", "rk_")) else ""
    return prefix + "*" * max(len(key) - len(prefix) - 4, 0) + key[-4:]


def _error(
    status: int, type_: str, message: str, *, code: str | None = None, param: str | None = None
) -> web.Response:
    error: Json = {"type": type_, "message": message}
    if code is not None:
        error["code"] = code
        error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
    if param is not None:
        error["param"] = param
    error["request_log_url"] = "https://dashboard.stripe.com/test/logs/req_fake"
    return web.json_response({"error": error}, status=status)


@pytest_asyncio.fixture(name="stripe_fake")
async def stripe_fake_fixture() -> AsyncIterator[StripeFake]:
    """`stripe_fake`: a started StripeFake on 127.0.0.1 (`.url` is the API base).

    Registered under the name `stripe_fake`; the function has another name so that a
    test module importing it does not shadow it with its parameters (ruff F811)."""
    fake = StripeFake()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()
