"""The retry timing functions (shared/backoff.py), as tables."""

from __future__ import annotations

import pytest

from shared.backoff import backoff_delay, rate_limit_wait


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
