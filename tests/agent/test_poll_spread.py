"""The long-poll's wait after a failure (agent/client.py `poll_wait`, issue 16): a fleet
that lost its control plane together must not come back polling in step.

A table for the function, and the daemon's poll loop against a small control plane of
the test's own on 127.0.0.1 that fails some polls (503, as a stopping control plane
answers a held one) and records the `wait` of each."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from agent import client
from agent.config import load_settings
from agent.daemon import Daemon
from agent.state import Credentials
from tests.fixtures import free_port

POLL_WAIT = 55


@pytest.mark.parametrize(
    ("wait", "after_failure", "rand", "expected"),
    [
        (55, False, 0.0, 55),  # a poll after an answer asks the configured wait
        (55, False, 0.99, 55),
        (55, True, 0.0, 1),  # after a failure: at least a second
        (55, True, 0.5, 28),
        (55, True, 0.999999, 55),  # never more than configured
        (1, True, 0.0, 1),
        (0, True, 0.5, 0),  # POLL_WAIT=0 (answer at once) stays 0
    ],
)
def test_poll_wait(wait: int, after_failure: bool, rand: float, expected: int) -> None:
    assert client.poll_wait(wait, after_failure, lambda: rand) == expected


class Plane:
    """Answers each long-poll at once: 503 for the first `failures`, then 304; records
    every `wait` asked."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.waits: list[int] = []
        self.asked = asyncio.Event()

    async def assignments(self, request: web.Request) -> web.Response:
        self.waits.append(int(request.query["wait"]))
        self.asked.set()
        if len(self.waits) <= self.failures:
            body = b'{"error": {"code": "service_unavailable", "message": "shutting down"}}'
            return web.Response(status=503, body=body, content_type="application/json")
        return web.Response(status=304)


@pytest.fixture
async def plane() -> AsyncIterator[tuple[Plane, str]]:
    made = Plane(failures=3)
    app = web.Application()
    app.router.add_get("/v1/agent/assignments", made.assignments)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield made, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_each_poll_after_a_failure_draws_its_own_wait(
    plane: tuple[Plane, str], tmp_path: Path
) -> None:
    made, url = plane
    settings = load_settings(
        {
            "CONTROL_URL": url,
            "STATE_DIR": str(tmp_path),
            "DOCKER_HOST": "unix:///nonexistent",
            "POLL_WAIT": str(POLL_WAIT),
            "BACKOFF_BASE": "0.01",
            "BACKOFF_MAX": "0.02",
        }
    )
    daemon = Daemon(settings)
    daemon.store.ensure_dir()
    daemon.creds = Credentials("srv-test1234", "s" * 43)
    daemon._registered.set()
    poll = asyncio.create_task(daemon._poll_loop())
    try:
        async with asyncio.timeout(30):  # an agent that never asks again fails, not hangs
            while len(made.waits) < 6:
                made.asked.clear()
                await made.asked.wait()
    finally:
        poll.cancel()
        await asyncio.gather(poll, return_exceptions=True)
        await daemon.client.close()
    first, *after_failures, after_answer, again = made.waits[:6]
    assert first == POLL_WAIT and after_answer == again == POLL_WAIT
    assert all(1 <= w <= POLL_WAIT for w in after_failures)
    # Three draws from [1, 55]: all three at 55 once in 166,375 runs.
    assert any(w < POLL_WAIT for w in after_failures)
