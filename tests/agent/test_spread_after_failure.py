"""The heartbeat and the long-poll after a failure (agent/client.py `after_failure`,
issue 16): a fleet that lost its control plane together must not come back beating and
polling in step.

Tables for the functions, and the daemon's loops against a small control plane of the
test's own on 127.0.0.1 that fails some requests (503, as a stopping control plane
answers a held poll) and records each poll's `wait`; the heartbeats' delays are read
where the loop hands them to `heartbeat.until_due`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from agent import client, heartbeat
from agent.config import load_settings
from agent.daemon import Daemon
from agent.state import Credentials
from shared.protocol import HeartbeatReply, encode
from tests.fixtures import free_port

POLL_WAIT = 55
INTERVAL = 1000.0  # what the plane hands out: the agent jitters it by 10 %
UNAVAILABLE = b'{"error": {"code": "service_unavailable", "message": "shutting down"}}'


@pytest.mark.parametrize(
    ("period", "failed", "rand", "expected"),
    [
        (50.0, False, 0.0, 50.0),  # after an answer: the period as it is
        (50.0, False, 0.99, 50.0),
        (50.0, True, 0.0, 50.0),  # after a failure: a share, never more than the period
        (50.0, True, 0.5, 25.0),
        (50.0, True, 0.9, 5.0),
    ],
)
def test_after_failure(period: float, failed: bool, rand: float, expected: float) -> None:
    assert client.after_failure(period, failed, lambda: rand) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("wait", "failed", "rand", "expected"),
    [
        (55, False, 0.0, 55),  # a poll after an answer asks the configured wait
        (55, False, 0.99, 55),
        (55, True, 0.0, 55),  # after a failure: never more than configured
        (55, True, 0.5, 28),  # whole seconds, rounded up
        (55, True, 0.999999, 1),  # at least a second
        (1, True, 0.5, 1),
        (0, True, 0.5, 0),  # POLL_WAIT=0 (answer at once) stays 0
    ],
)
def test_poll_wait(wait: int, failed: bool, rand: float, expected: int) -> None:
    assert client.poll_wait(wait, failed, lambda: rand) == expected


class Plane:
    """Answers each long-poll at once, 503 for the first `failures` and then 304,
    recording every `wait` asked; and heartbeats, every third failing."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.waits: list[int] = []
        self.asked = asyncio.Event()
        self.beats = 0

    async def heartbeat(self, request: web.Request) -> web.Response:
        """Every third beat fails, from the first: fail, answer, answer, fail, ..."""
        self.beats += 1
        if self.beats % 3 == 1:
            return web.Response(status=503, body=UNAVAILABLE, content_type="application/json")
        body = encode(HeartbeatReply(heartbeat_interval=INTERVAL, generation=1))
        return web.Response(body=body, content_type="application/json")

    async def assignments(self, request: web.Request) -> web.Response:
        self.waits.append(int(request.query["wait"]))
        self.asked.set()
        if len(self.waits) <= self.failures:
            return web.Response(status=503, body=UNAVAILABLE, content_type="application/json")
        return web.Response(status=304)


@pytest.fixture
async def plane() -> AsyncIterator[tuple[Plane, str]]:
    made = Plane(failures=3)
    app = web.Application()
    app.router.add_get("/v1/agent/assignments", made.assignments)
    app.router.add_post("/v1/agent/heartbeat", made.heartbeat)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield made, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def daemon_of(url: str, state: Path) -> Daemon:
    """A registered daemon with no Docker engine, retrying at once after a failure."""
    settings = load_settings(
        {
            "CONTROL_URL": url,
            "STATE_DIR": str(state),
            "DOCKER_HOST": "unix:///nonexistent",
            "POLL_WAIT": str(POLL_WAIT),
            "BACKOFF_BASE": "0.01",
            "BACKOFF_MAX": "0.02",
        }
    )
    made = Daemon(settings)
    made.store.ensure_dir()
    made.creds = Credentials("srv-test1234", "s" * 43)
    made._registered.set()
    return made


async def test_each_poll_after_a_failure_draws_its_own_wait(
    plane: tuple[Plane, str], tmp_path: Path
) -> None:
    made, url = plane
    daemon = daemon_of(url, tmp_path)
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


async def test_the_beat_after_a_failed_one_comes_a_random_share_of_the_interval_later(
    plane: tuple[Plane, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made, url = plane
    daemon = daemon_of(url, tmp_path)
    delays: list[float] = []
    enough = asyncio.Event()

    async def due_at_once(delay: float, *_: object, **__: object) -> None:
        delays.append(delay)  # what the loop would sleep; the test goes on at once
        if len(delays) >= 16:
            enough.set()
        await asyncio.sleep(0)

    monkeypatch.setattr(heartbeat, "until_due", due_at_once)
    beats = asyncio.create_task(daemon._heartbeat_loop())
    try:
        await asyncio.wait_for(enough.wait(), 30)
    finally:
        beats.cancel()
        await asyncio.gather(beats, return_exceptions=True)
        await daemon.client.close()
    assert made.beats >= 24  # eight failed, sixteen answered
    recovered, steady = delays[0:16:2], delays[1:16:2]  # fail, answer, answer, ...
    assert all(0.9 * INTERVAL <= d <= 1.1 * INTERVAL for d in steady), steady
    assert all(0 < d <= 1.1 * INTERVAL for d in recovered), recovered
    # Eight draws: each one stays at 0.9 of the interval or more about once in ten.
    assert any(d < 0.9 * INTERVAL for d in recovered), recovered
