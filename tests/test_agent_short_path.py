"""Worker-protocol calls skip the middlewares only admin routes need (issue 16), and
keep everything the agent routes need: the request id, the one error shape, the body
limit. A marker middleware installed after `request_ids` (as `create_app` installs
the rest) shows which requests went through the whole chain."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from control.api import middleware
from control.errors import Forbidden

CHAINED = web.AppKey("chained", list)


@web.middleware
async def marker(request: web.Request, handler: middleware.Handler) -> web.StreamResponse:
    request.app[CHAINED].append(request.path)
    return await handler(request)


async def ok(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"ok": True})


async def refused(request: web.Request) -> web.Response:
    raise Forbidden("worker srv-x is dead", code="worker_revoked")


async def broken(request: web.Request) -> web.Response:
    raise RuntimeError("a bug")


async def not_modified(request: web.Request) -> web.Response:
    raise web.HTTPNotModified()


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application(
        middlewares=[middleware.request_ids, middleware.errors, middleware.body_limit, marker],
        client_max_size=middleware.MAX_BODY,
    )
    app[CHAINED] = []
    app.router.add_post("/v1/agent/ok", ok)
    app.router.add_get("/v1/agent/refused", refused)
    app.router.add_get("/v1/agent/broken", broken)
    app.router.add_get("/v1/agent/same", not_modified)
    app.router.add_get("/v1/servers", ok)
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_an_agent_call_skips_the_other_middlewares(
    client: TestClient[web.Request, web.Application],
) -> None:
    async with client.post("/v1/agent/ok", data=b"{}", headers={"X-Request-Id": "r-1"}) as r:
        assert (r.status, r.headers["X-Request-Id"]) == (200, "r-1")
    async with client.get("/v1/servers") as r:
        assert r.status == 200
    assert client.app is not None
    assert client.app[CHAINED] == ["/v1/servers"]


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/agent/refused", 403, "worker_revoked"),
        ("GET", "/v1/agent/broken", 500, "internal_error"),
        ("GET", "/v1/agent/nowhere", 404, "not_found"),  # unknown: the whole chain answers
        ("DELETE", "/v1/agent/ok", 405, "method_not_allowed"),
    ],
)
async def test_agent_errors_keep_the_one_shape_and_the_request_id(
    client: TestClient[web.Request, web.Application],
    method: str,
    path: str,
    status: int,
    code: str,
) -> None:
    async with client.request(method, path, headers={"X-Request-Id": "r-2"}) as r:
        body = await r.json()
        assert (r.status, body["error"]["code"], r.headers["X-Request-Id"]) == (status, code, "r-2")


async def test_an_agent_redirect_or_304_passes_through(
    client: TestClient[web.Request, web.Application],
) -> None:
    async with client.get("/v1/agent/same", headers={"X-Request-Id": "r-3"}) as r:
        assert (r.status, r.headers["X-Request-Id"]) == (304, "r-3")


async def test_an_oversized_agent_body_is_refused_before_the_handler(
    client: TestClient[web.Request, web.Application],
) -> None:
    async with client.post("/v1/agent/ok", data=b"x" * (middleware.MAX_BODY + 1)) as r:
        assert r.status == 413
        assert (await r.json())["error"]["code"] == "payload_too_large"
