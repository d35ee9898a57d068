"""The retry timing functions (shared/backoff.py), as tables; and that they are the only
backoff formula: every other retry in the code base calls them."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from agent import client
from control.capacity.decisions import retry_decision
from shared.backoff import backoff_delay, jittered, rate_limit_wait

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [
        (0, 0.0, 2.5),  # d = 5: jitter in [d/2, d]
        (0, 1.0, 5.0),
        (1, 0.0, 5.0),  # d = 10
        (3, 0.5, 30.0),  # d = 40
        (10, 0.0, 150.0),  # capped at 300
        (10, 1.0, 300.0),
        (10_000, 1.0, 300.0),  # no overflow
        (-3, 1.0, 5.0),  # a negative attempt is the first
        (2, 7.0, 20.0),  # rand clamped to [0, 1]
    ],
)
def test_backoff_delay(attempt: int, rand: float, expected: float) -> None:
    assert backoff_delay(attempt, base=5.0, cap=300.0, rand=rand) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("limit", "remaining", "reset_in", "rand", "expected"),
    [
        # Hetzner after a 429: empty bucket, full in an hour: one request in a second.
        (3600, 0, 3600.0, 0.0, 1.0),
        (3600, 0, 3600.0, 1.0, 1.5),  # jitter adds up to half a request
        (3600, 5, 3595.0, 0.0, 0.0),  # requests left: no wait
        (None, 0, 0.5, 1.0, 0.5),  # never longer than until the bucket is full
        (3600, 0, 0.5, 1.0, 0.5 / 3600 * 1.5),  # a fast refill, as announced
        (3600, 0, 0.0, 1.0, 0.0),
        (7200, 0, 3600.0, 0.0, 0.5),  # a bigger limit refills faster
        (3600, 0, 120.0, 0.0, 120.0 / 3600),  # the rate the headers announce
        (3600, 0, None, 0.0, 1.0),  # no reset header: limit per hour
        (None, None, None, 0.0, 1.0),  # no headers: Hetzner's one per second
        (None, 0, 10.0, 1.0, 1.5),
    ],
)
def test_rate_limit_wait(
    limit: int | None,
    remaining: int | None,
    reset_in: float | None,
    rand: float,
    expected: float,
) -> None:
    assert rate_limit_wait(limit, remaining, reset_in, rand=rand) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("attempt", "spread", "rand", "expected"),
    [
        (0, 0.5, 0.0, 2.5),  # the default spread: [d/2, d]
        (0, 0.2, 0.0, 4.0),  # a narrower spread: [0.8 d, d]
        (0, 0.2, 1.0, 5.0),
        (2, 0.0, 0.3, 20.0),  # no spread: exactly d
        (2, 1.0, 0.25, 5.0),  # full spread: [0, d]
        (1, 3.0, 0.0, 0.0),  # spread clamped to [0, 1]
    ],
)
def test_backoff_delay_spread(attempt: int, spread: float, rand: float, expected: float) -> None:
    delay = backoff_delay(attempt, base=5.0, cap=300.0, rand=rand, spread=spread)
    assert delay == pytest.approx(expected)


@pytest.mark.parametrize(
    ("spread", "rand", "expected"),
    [(0.1, 0.0, 9.0), (0.1, 1.0, 11.0), (0.1, 0.5, 10.0), (0.2, 0.25, 9.0), (0.1, -1.0, 9.0)],
)
def test_jittered(spread: float, rand: float, expected: float) -> None:
    assert jittered(10.0, spread=spread, rand=rand) == pytest.approx(expected)
    assert client.jittered(10.0, lambda: rand) == pytest.approx(
        jittered(10.0, spread=0.1, rand=rand)
    )


class _Fixed(random.Random):
    """A generator whose every draw is `value`: pins the jitter in a table."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [
        (0, 0.0, 4.0),  # 5 s -20%
        (0, 1.0, 6.0),  # 5 s +20%
        (0, 0.5, 5.0),
        (3, 0.5, 40.0),  # 5 * 2**3
        (10, 0.0, 240.0),  # capped at 300 -20%
        (30, 1.0, 360.0),  # capped at 300 +20%
    ],
)
def test_the_autoscalers_transient_pause_is_the_shared_backoff(
    attempt: int, rand: float, expected: float
) -> None:
    plan = retry_decision("transient", attempt, None, _Fixed(rand))
    assert plan.pause_scale_up == pytest.approx(expected)


# A private backoff or jitter formula: powers of two or a uniform draw around a delay.
_PRIVATE_FORMULA = re.compile(r"\b2(\.0)? \*\* |random\.uniform\(|\.uniform\(")


def test_no_private_backoff_formula_outside_shared_backoff() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in ("control", "agent", "shared", "cloud_init")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != ROOT / "shared" / "backoff.py"
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if _PRIVATE_FORMULA.search(line)
    ]
    assert found == []
