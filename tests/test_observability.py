"""/metrics, request ids and log formats."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from unittest import mock

import pytest
from aiohttp.test_utils import make_mocked_request

from control import logs, metrics
from tests.fixtures import ControlPlane
from tests.test_protocol import registered


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
    assert f'clawfleet_heartbeat_age_seconds{{server="{worker.key_id}"}}' in text
    assert 'clawfleet_webhook_events{status="pending"}' in text
    assert "clawfleet_assignment_waiters" in text
    assert "clawfleet_provider_calls_total" in text


def request_from(ip: str, headers: dict[str, str] | None = None) -> object:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda key, default=None: (
        (ip, 1234) if key == "peername" else default
    )
    return make_mocked_request("GET", "/metrics", headers=headers or {}, transport=transport)


@pytest.mark.parametrize(
    ("ip", "headers", "token", "expected"),
    [
        ("127.0.0.1", {}, "", True),
        ("::1", {}, "", True),
        ("203.0.113.5", {}, "", False),
        ("203.0.113.5", {"Authorization": "Bearer m" * 1 + "x" * 31}, "m" + "x" * 31, True),
        ("203.0.113.5", {"Authorization": "Bearer wrong"}, "m" + "x" * 31, False),
        (
            "203.0.113.5",
            {"Authorization": "Bearer "},
            "",
            False,
        ),  # no token configured: loopback only
    ],
)
def test_metrics_access(ip: str, headers: dict[str, str], token: str, expected: bool) -> None:
    assert metrics.allowed(request_from(ip, headers), token) is expected  # type: ignore[arg-type]


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
