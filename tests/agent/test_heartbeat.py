"""agent/heartbeat.py: the next heartbeat goes the moment a starting container's health
changes, not up to an interval later; with nothing starting the wait is unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from agent.docker_objects import DockerError
from agent.heartbeat import PROBE_EVERY, Read, health_changed, until_due
from shared.protocol import ContainerReport


def r(user: str, health: str, state: str = "running", restarts: int = 0) -> ContainerReport:
    return ContainerReport(user, state, health, restart_count=restarts)


@pytest.mark.parametrize(
    ("before", "after", "changed"),
    [
        ([r("a", "starting")], [r("a", "starting")], False),
        ([r("a", "starting")], [r("a", "healthy")], True),
        ([r("a", "starting")], [r("a", "unhealthy")], True),
        ([r("a", "starting")], [r("a", "none", "exited")], True),
        ([r("a", "starting")], [], True),  # unassigned meanwhile
        ([r("a", "starting")], [r("a", "starting"), r("b", "starting")], True),
        ([r("a", "starting")], [r("a", "starting", restarts=1)], False),  # same words
        ([r("a", "healthy"), r("b", "starting")], [r("b", "starting"), r("a", "healthy")], False),
    ],
)
def test_health_changed(
    before: list[ContainerReport], after: list[ContainerReport], changed: bool
) -> None:
    assert health_changed(before, after) is changed


class Clock:
    """A fake monotonic clock that only the injected sleep moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def reader(clock: Clock, healthy_at: float, fail_at: float = -1.0) -> Read:
    """Reports `a` starting until `healthy_at` on the clock, then healthy."""

    async def read() -> Sequence[ContainerReport]:
        if abs(clock.now - fail_at) < 1e-9:
            raise DockerError("docker went away for a moment")
        return [r("a", "healthy" if clock.now >= healthy_at else "starting")]

    return read


def test_a_start_that_turns_healthy_ends_the_wait_at_the_next_probe() -> None:
    clock = Clock()
    asyncio.run(
        until_due(1.0, [r("a", "starting")], reader(clock, 0.6), sleep=clock.sleep, clock=clock)
    )
    # Healthy at 0.6 s: heard at the first probe after it, not at the 1 s beat.
    assert clock.now == pytest.approx(0.75)
    assert all(s <= PROBE_EVERY for s in clock.sleeps)


def test_a_start_still_starting_waits_the_whole_delay() -> None:
    clock = Clock()
    asyncio.run(
        until_due(1.1, [r("a", "starting")], reader(clock, 99), sleep=clock.sleep, clock=clock)
    )
    assert clock.now == pytest.approx(1.1)


def test_a_failed_read_is_no_change() -> None:
    clock = Clock()
    read = reader(clock, healthy_at=0.5, fail_at=0.5)
    asyncio.run(until_due(1.0, [r("a", "starting")], read, sleep=clock.sleep, clock=clock))
    assert clock.now == pytest.approx(0.75)  # the failed read at 0.5 s was skipped


def test_nothing_starting_is_one_plain_sleep_and_no_probe() -> None:
    clock = Clock()

    async def read() -> Sequence[ContainerReport]:
        raise AssertionError("an idle worker must not probe between beats")

    asyncio.run(until_due(10.0, [r("a", "healthy")], read, sleep=clock.sleep, clock=clock))
    assert clock.sleeps == [10.0]
