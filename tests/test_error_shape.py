"""The one error shape (control/api/middleware.py), pinned whole on the real app:
`{"error": {"code": str, "message": str}}` as JSON, the status, and the request id,
for an unexpected error (500), domain errors and aiohttp's own 404, 405 and 413."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from control.app import create_app
from tests.fixtures import ADMIN_TOKEN, make_settings

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# What the failing handler knows; none of it may reach the caller.
INSIDE = "db password is hunter2-at-/var/lib/clawfleet"
MIB = 1024 * 1024


async def _boom(request: web.Request) -> web.Response:
    raise KeyError(INSIDE)  # a bug: no domain error means to answer this


@pytest.fixture
async def client(tmp_path: Path, aiohttp_client: AiohttpClient) -> TestClient[Any, Any]:
    app = create_app(make_settings(tmp_path))
    app.router.add_get("/test-only/boom", _boom)  # the production app has no such route
    return await aiohttp_client(app)


async def _call(
    client: TestClient[Any, Any], method: str, path: str, **kwargs: Any
) -> tuple[int, str, str, dict[str, Any]]:
    headers = {"X-Request-Id": "shape-test-1", **kwargs.pop("headers", {})}
    async with client.request(method, path, headers=headers, **kwargs) as r:
        return r.status, r.content_type, r.headers.get("X-Request-Id", ""), await r.json()


async def test_an_unexpected_error_is_a_500_that_reveals_nothing(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    async with client.get("/test-only/boom", headers={"X-Request-Id": "boom-1"}) as r:
        status, content_type, text = r.status, r.content_type, await r.text()
        request_id = r.headers.get("X-Request-Id")
        body = await r.json()
    assert status == 500
    assert content_type == "application/json"
    assert body == {
        "error": {"code": "internal_error", "message": "internal error (see the control plane log)"}
    }
    assert request_id == "boom-1"
    for leak in ("Traceback", "KeyError", "hunter2", "_boom", ".py"):
        assert leak not in text
    # The operator has it all, in one record that names the request.
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert len(logged) == 1 and "GET /test-only/boom" in logged[0].getMessage()


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code", "message"),
    [
        # Domain errors, raised on purpose by the code.
        ("GET", "/v1/users/ghost", {"headers": ADMIN}, 404, "not_found", "no user ghost"),
        (
            "GET",
            "/v1/servers",
            {"headers": {"Authorization": "Bearer wrong"}},
            401,
            "unauthorized",
            "admin API needs Authorization: Bearer <ADMIN_TOKEN>",
        ),
        (
            "GET",
            "/v1/events?limit=x",
            {"headers": ADMIN},
            400,
            "bad_request",
            "limit: expected a non-negative integer, got 'x'",
        ),
        (
            "POST",
            "/v1/users",
            {"headers": {**ADMIN, "Content-Length": str(MIB + 1)}, "data": b"x" * (MIB + 1)},
            413,
            "payload_too_large",
            "request body is larger than 1 MiB",
        ),
        # aiohttp's own: no route, a route without this method.
        ("GET", "/nowhere", {}, 404, "not_found", "Not Found"),
        ("GET", "/v1/agent/heartbeat", {}, 405, "method_not_allowed", "Method Not Allowed"),
    ],
)
async def test_every_error_has_the_one_shape(
    client: TestClient[Any, Any],
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    code: str,
    message: str,
) -> None:
    got = await _call(client, method, path, **kwargs)
    assert got == (
        status,
        "application/json",
        "shape-test-1",
        {"error": {"code": code, "message": message}},
    )


async def test_aiohttp_413_on_a_chunked_body_has_the_one_shape(
    client: TestClient[Any, Any],
) -> None:
    """No declared length: aiohttp's own limit (client_max_size) stops the read."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(2):
            yield b"x" * (MIB // 2 + 1)

    got = await _call(client, "POST", "/v1/users", headers=ADMIN, data=chunks())
    assert got == (
        413,
        "application/json",
        "shape-test-1",
        {"error": {"code": "payload_too_large", "message": "request body is larger than 1 MiB"}},
    )
