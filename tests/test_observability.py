"""/metrics, request ids and log formats."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from yarl import URL

from control import logs
from control.api import metrics_endpoint, middleware
from control.settings import Settings, SettingsError
from tests.fixtures import ControlPlane
from tests.test_protocol import registered

TOKEN = "metrics-token-" + "m" * 30


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            if line.split(" ")[0] == name or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


async def scrape(control: ControlPlane, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with control.session.get(control.url + "/metrics", headers=headers or {}) as r:
        return r.status, await r.text()


async def test_metrics_reflect_the_fleet(control: ControlPlane) -> None:
    worker = await registered(control)
    await control.admin("POST", "/v1/users", {"user_id": "ann", "subdomain": "ann"})
    for _ in range(3):
        await worker.heartbeat()
    status, text = await scrape(control)
    assert status == 200
    assert sample(text, "clawfleet_heartbeats_received_total") == 3
    assert sample(text, 'clawfleet_servers{status="active"}') == 1
    assert sample(text, 'clawfleet_users{state="provisioning"}') == 1
    # Aggregates only since issue 16: a histogram over the workers, no series per server.
    assert sample(text, "clawfleet_heartbeat_age_seconds_count") == 1
    assert worker.key_id not in text
    assert 'clawfleet_webhook_events{status="pending"}' in text
    assert "clawfleet_assignment_waiters" in text
    assert "clawfleet_provider_calls_total" in text


@pytest.mark.parametrize(
    ("host", "public_url", "token", "mode"),
    [
        ("127.0.0.1", "http://127.0.0.1:8080", "", "loopback"),  # `make run`
        ("::1", "http://[::1]:8080", "", "loopback"),
        ("localhost", "http://localhost:8080", TOKEN, "loopback"),
        # The production guide: a TLS proxy in front of 127.0.0.1:8080.
        ("127.0.0.1", "https://fleet.example.com", "", "closed"),
        ("127.0.0.1", "https://fleet.example.com", TOKEN, "token"),
        ("127.0.0.1", "http://fleet.example.com:8080", "", "closed"),
        ("::", "http://[::]:8080", "", "closed"),  # reachable from anywhere
        ("::", "http://[::]:8080", TOKEN, "token"),
        ("10.0.0.5", "http://10.0.0.5:8080", TOKEN, "token"),
    ],
)
def test_metrics_access_mode(host: str, public_url: str, token: str, mode: str) -> None:
    assert metrics_endpoint.access_mode(host, 8080, public_url, token) == mode


@pytest.mark.parametrize(
    ("mode", "remote", "authorization", "token", "expected"),
    [
        ("loopback", "127.0.0.1", "", "", True),
        ("loopback", "::1", "", "", True),
        ("loopback", "203.0.113.5", "", "", False),
        ("loopback", "203.0.113.5", f"Bearer {TOKEN}", TOKEN, True),
        ("loopback", "203.0.113.5", "Bearer wrong", TOKEN, False),
        ("loopback", "203.0.113.5", "Bearer ", "", False),  # no token configured
        ("token", "127.0.0.1", "", TOKEN, False),  # a local proxy is loopback too
        ("token", "127.0.0.1", f"Bearer {TOKEN}", TOKEN, True),
        ("token", "127.0.0.1", "Bearer \udcff", TOKEN, False),
        ("closed", "127.0.0.1", "", "", False),
        ("closed", "127.0.0.1", "Bearer ", "", False),
    ],
)
def test_metrics_access(
    mode: metrics_endpoint.MetricsMode, remote: str, authorization: str, token: str, expected: bool
) -> None:
    assert metrics_endpoint.allowed(mode, remote, authorization, token) is expected


@pytest.mark.parametrize(
    ("overrides", "mode", "anonymous", "with_token", "says"),
    [
        ({}, "loopback", 200, 200, "open to loopback callers"),
        ({"public_url": "https://fleet.example.com"}, "closed", 403, 403, "closed"),
        (
            {"public_url": "https://fleet.example.com", "metrics_token": TOKEN},
            "token",
            401,
            200,
            "every caller needs",
        ),
        ({"listen_host": "::", "metrics_token": TOKEN}, "token", 401, 200, "every caller"),
    ],
)
async def test_metrics_behind_a_proxy_need_the_token(
    control_factory: Callable[..., ControlPlane],
    caplog: pytest.LogCaptureFixture,
    overrides: dict[str, str],
    mode: str,
    anonymous: int,
    with_token: int,
    says: str,
) -> None:
    """The test client is on loopback, exactly like a reverse proxy on the same host."""
    control = control_factory(**overrides)
    await control.start()
    lines = [r.getMessage() for r in caplog.records if r.name == "control.api.metrics_endpoint"]
    assert len(lines) == 1 and lines[0].startswith("/metrics: ") and says in lines[0]
    status, _ = await scrape(control)
    assert status == anonymous
    status, text = await scrape(control, {"Authorization": f"Bearer {TOKEN}"})
    assert status == with_token
    if with_token == 200:
        assert "clawfleet_servers" in text
    async with control.session.get(control.url + "/metrics") as r:
        if r.status != 200:
            body = await r.json()
            assert body["error"]["code"] == {401: "unauthorized", 403: "metrics_closed"}[r.status]


async def test_every_response_carries_a_request_id(
    control_factory: Callable[..., ControlPlane], caplog: pytest.LogCaptureFixture
) -> None:
    control = control_factory()
    await control.start()
    async with control.session.get(
        control.url + "/healthz", headers={"X-Request-Id": "abc-123"}
    ) as r:
        assert r.headers["X-Request-Id"] == "abc-123"
    async with control.session.get(
        control.url + "/healthz", headers={"X-Request-Id": "bad id; with spaces"}
    ) as r:
        made = r.headers["X-Request-Id"]
        assert made != "bad id; with spaces" and len(made) == 16
    async with control.session.get(control.url + "/v1/servers") as r:  # an error too
        assert r.status == 401 and r.headers["X-Request-Id"]
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "clawfleet.access"]
    assert any(line.startswith("GET /healthz 200") for line in lines)


def test_json_log_lines_parse_and_carry_the_request_id() -> None:
    record = logging.LogRecord(
        "clawfleet.x", logging.WARNING, __file__, 1, "worker %s late", ("srv-1",), None
    )
    record.request_id = "req-9"
    entry = json.loads(logs.JsonFormatter().format(record))
    assert entry["message"] == "worker srv-1 late"
    assert (
        entry["level"] == "warning"
        and entry["request_id"] == "req-9"
        and entry["logger"] == "clawfleet.x"
    )


FORGED = "2026-01-01 00:00:00,000 INFO clawfleet.access [-] POST /v1/users 201 1.0ms"
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} [A-Z]+ ")


@contextlib.contextmanager
def captured_log(fmt: str) -> Iterator[io.StringIO]:
    """The handler `__main__` installs, writing to a buffer, on the root logger."""
    buffer = io.StringIO()
    handler = logs.handler(fmt, buffer)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def forge(control: ControlPlane) -> None:
    for path in (
        "/v1/x%0A" + quote(FORGED),
        "/v1/x%0D" + quote(FORGED),
        "/v1/x%E2%80%A8" + quote(FORGED),  # U+2028, a line break to some viewers
        "/v1/x%1B%5B2J%1B%5BH",  # clear the operator's terminal
    ):
        url = URL(control.url + path, encoded=True)
        async with control.session.get(url) as r:
            assert r.status == 401


async def test_a_request_path_cannot_forge_text_log_lines(control: ControlPlane) -> None:
    with captured_log("text") as buffer:
        await forge(control)
    everything = buffer.getvalue().splitlines()
    for line in everything:  # aiohttp's own access log included
        assert TIMESTAMP.match(line) and line.isprintable(), line
    lines = [line for line in everything if " clawfleet.access " in line]
    assert len(lines) == 4 and all(line.endswith("ms") for line in lines)
    assert "GET /v1/x\\n2026-01-01 00:00:00,000 INFO" in lines[0]
    assert "\\r" in lines[1] and "\\u2028" in lines[2] and "\\x1b[2J" in lines[3]


async def test_a_request_path_cannot_forge_json_log_lines(control: ControlPlane) -> None:
    with captured_log("json") as buffer:
        await forge(control)
    everything = buffer.getvalue().splitlines()
    for line in everything:
        assert line.isprintable() and json.loads(line)["message"].isprintable(), line
    lines = [line for line in everything if json.loads(line)["logger"] == "clawfleet.access"]
    assert len(lines) == 4
    assert json.loads(lines[0])["message"].startswith("GET /v1/x\\n2026-01-01")


def test_a_traceback_keeps_its_lines_but_none_can_pass_for_a_record() -> None:
    try:
        raise ValueError("bad input\n" + FORGED)
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "clawfleet.x", logging.ERROR, __file__, 1, "failed on %s", ("a\nb",), exc_info
    )
    record.request_id = "-"
    text = logs.TextFormatter().format(record).split("\n")
    assert TIMESTAMP.match(text[0]) and text[0].endswith("failed on a\\nb")
    assert len(text) > 3 and all(line.startswith(logs.CONTINUATION) for line in text[1:])
    assert text[1] == "| Traceback (most recent call last):"
    assert not any(TIMESTAMP.match(line) for line in text[1:])
    entry = json.loads(logs.JsonFormatter().format(record))
    assert entry["message"] == "failed on a\\nb"
    assert "ValueError: bad input" in entry["exception"]


@pytest.mark.parametrize(
    ("escaped", "shown"),
    [
        ("plain é ü 漢字 text", "plain é ü 漢字 text"),
        ("a\nb\rc\td", "a\\nb\\rc\\td"),
        ("\x00\x1b\x7f\x85", "\\x00\\x1b\\x7f\\x85"),
        ("\u2028\u202e\u200b", "\\u2028\\u202e\\u200b"),
        ("\U000e0001", "\\U000e0001"),
        ("\udcff", "\\udcff"),
    ],
)
def test_escape(escaped: str, shown: str) -> None:
    assert logs.escape(escaped) == shown


async def test_a_request_id_with_a_trailing_newline_is_replaced() -> None:
    async def ok(request: web.Request) -> web.StreamResponse:
        return web.Response()

    for presented in ("abc\n", "a" * 65, "abc def"):
        request = make_mocked_request("GET", "/healthz", headers={"X-Request-Id": presented})
        response = await middleware.request_ids(request, ok)
        assert response.headers["X-Request-Id"] != presented
        assert re.fullmatch(r"[0-9a-f]{16}", response.headers["X-Request-Id"])


@pytest.mark.parametrize(("value", "ok"), [("", True), ("m" * 32, True), ("m" * 31, False)])
def test_a_metrics_token_is_as_long_as_the_other_secrets(value: str, ok: bool) -> None:
    env = {"ADMIN_TOKEN": "a" * 40, "INTERNAL_SECRET": "b" * 40, "METRICS_TOKEN": value}
    if ok:
        assert Settings.from_env(env).metrics_token == value
    else:
        with pytest.raises(SettingsError, match="METRICS_TOKEN: must be at least 32"):
            Settings.from_env(env)
