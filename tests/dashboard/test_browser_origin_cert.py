"""A server's page shows its origin certificate's expiry (issue 14), in a real browser,
with a warning inside the agent's renewal window and an error when a worker of a
deployment with origin TLS on has none."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.conftest import LAPTOP
from tests.dashboard.test_browser import sign_in, tab
from tests.origin_tls_plane import Start, tls_plane_fixture  # noqa: F401
from tests.test_protocol import registered
from tests.worker import FakeWorker

pytestmark = pytest.mark.browser
DAY = 86400.0


async def beat(worker: FakeWorker, expires: float | None) -> None:
    body = {
        "agent_version": "0.1.0",
        "applied_generation": 0,
        "resources": worker.resources,
        "containers": [],
        "features": worker.features,
        "host": {"origin_cert_expires": expires},
    }
    reply = await worker.request("POST", "/v1/agent/heartbeat", body)
    assert reply.status == 200, reply.body


async def test_the_server_page_shows_the_origin_certificate(
    tls_plane: Start, browser: Any, artifacts: Path
) -> None:
    from playwright.async_api import expect

    control = await tls_plane()
    now = time.time()
    cases = {
        "fresh": (now + 80 * DAY, "ok", r"^expires .+$", None),
        "due": (now + 10 * DAY, "renew_due", r"^expires .+ \(renewal due\)$", "warn"),
        "none": (None, "missing", r"^MISSING$", "error"),
    }
    workers = {}
    for name, (expires, state, _, _) in cases.items():
        workers[name] = await registered(control, f"worker-{name}")
        await beat(workers[name], expires)
        _, view = await control.admin("GET", f"/v1/servers/{workers[name].key_id}")
        assert (view["origin_cert"], view["origin_cert_expires"]) == (state, expires)

    async with tab(browser, control, LAPTOP) as t:
        await sign_in(t.page, control)
        for name, (_, _, text, style) in cases.items():
            await t.page.goto(f"/dashboard/servers/{workers[name].key_id}")
            cert = t.page.locator("#server-detail #origin-cert")
            await expect(cert).to_have_text(re.compile(text))
            if style:
                await expect(cert).to_have_class(style)
            else:
                await expect(cert).not_to_have_class(re.compile("warn|error"))
            if name == "due":
                await t.page.screenshot(path=str(artifacts / "server-origin-cert-due.png"))
        assert t.problems == []
