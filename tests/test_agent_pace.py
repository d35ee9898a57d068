"""One worker's pace on the agent protocol (control/api/agent_pace.py): a compromised
worker signs its requests correctly, so only a per-worker limit stops a flood."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

import pytest

from control.api.agent_pace import BURST, AgentPace, Kind
from control.api.ratelimit import RateLimited
from tests.fixtures import ControlPlane
from tests.test_protocol import registered


@pytest.mark.parametrize(
    ("rate", "kind", "first", "later", "then", "admitted"),
    [
        (2.0, "heartbeat", BURST, 0.0, 0, BURST),  # the burst
        (2.0, "heartbeat", BURST + 1, 0.0, 0, BURST),  # one past it
        (2.0, "heartbeat", BURST + 1, 1.0, 3, BURST + 2),  # a second later: two more
        (2.0, "poll", 2 * BURST + 1, 0.0, 0, 2 * BURST),  # polls: twice the burst
        (2.0, "poll", 2 * BURST, 1.0, 6, 2 * BURST + 4),  # ... and twice the rate
        (0.5, "heartbeat", BURST, 1.0, 2, BURST),  # half a token in a second: none
        (0.0, "heartbeat", 1000, 0.0, 0, 1000),  # 0: no limit
    ],
)
def test_admits_a_burst_then_the_rate(
    rate: float, kind: Kind, first: int, later: float, then: int, admitted: int
) -> None:
    """`first` calls at t=0, then `then` more at t=`later`."""
    pace = AgentPace(rate)
    count = 0
    for now in [0.0] * first + [later] * then:
        try:
            pace.admit(kind, "srv-a", now)
            count += 1
        except RateLimited as exc:
            assert exc.retry_after >= 1 and exc.status == 429
    assert count == admitted


def test_one_worker_does_not_use_up_another() -> None:
    pace = AgentPace(2.0)
    for _ in range(BURST):
        pace.admit("heartbeat", "srv-a", 0.0)
    with pytest.raises(RateLimited):
        pace.admit("heartbeat", "srv-a", 0.0)
    pace.admit("heartbeat", "srv-b", 0.0)
    pace.admit("poll", "srv-a", 0.0)  # its polls have their own bucket


def nonce_rows(path: str) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM nonces").fetchone()[0])


async def test_a_flooding_worker_gets_429_and_nothing_is_written(control: ControlPlane) -> None:
    worker = await registered(control, "w1")
    other = await registered(control, "w2")
    began = time.monotonic()
    statuses = [(await worker.heartbeat()).status for _ in range(BURST + 5)]
    elapsed = time.monotonic() - began
    assert 429 in statuses and set(statuses) == {200, 429}
    # The refill is 2 a second: what was admitted is the burst plus what time brought.
    assert statuses.count(200) <= BURST + 2 * elapsed + 1
    written = nonce_rows(control.settings.database_path)
    refused = await worker.heartbeat()
    assert refused.status == 429 and refused.body["error"]["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    assert nonce_rows(control.settings.database_path) == written
    assert (await other.heartbeat()).status == 200


async def test_zero_turns_the_limit_off(control_factory: Callable[..., ControlPlane]) -> None:
    control = control_factory(agent_calls_per_second=0)
    await control.start()
    worker = await registered(control, "w1")
    statuses = {(await worker.heartbeat()).status for _ in range(BURST + 5)}
    assert statuses == {200}
