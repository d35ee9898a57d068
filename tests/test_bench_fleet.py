"""bench/fleet.py's own arithmetic: which collector pauses count against issue 16's
50 ms (only those inside the measured window, only those over the limit)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.fleet import Window, p50_p99, pauses

# [unix time, generation, wall ms, objects collected, CPU ms], as bench/gc_probe.py writes
PROBE: dict[str, Any] = {
    "thresholds": [50000, 1000, 10],
    "frozen": 1,
    "pauses": [
        [99.0, 2, 900.0, 0, 800.0],  # before the window
        [100.0, 0, 50.0, 0, 40.0],  # at the limit: not over it
        [105.0, 1, 51.0, 0, 50.0],
        [110.0, 0, 3.0, 0, 3.0],
        [120.0, 2, 700.0, 0, 600.0],  # on the window's last instant
        [120.5, 2, 999.0, 0, 900.0],  # after it
    ],
}


@pytest.mark.parametrize(
    ("start", "end", "count", "over", "longest"),
    [
        (100.0, 120.0, 4, 2, 700.0),
        (101.0, 119.0, 2, 1, 51.0),
        (90.0, 130.0, 6, 4, 999.0),
        (200.0, 210.0, 0, 0, 0.0),
    ],
)
def test_pauses_in_the_window_and_over_the_limit(
    start: float, end: float, count: int, over: int, longest: float
) -> None:
    found = pauses(PROBE, start, end)
    assert (found["count"], found["over_50ms"], found["max_ms"]) == (count, over, longest)


def test_no_probe_output_is_no_pauses() -> None:
    assert pauses({"pauses": []}, 0.0, 1.0) == {"count": 0, "max_ms": 0.0, "over_50ms": 0}


@pytest.mark.parametrize(
    ("at", "inside"), [(9.9, False), (10.0, True), (20.0, True), (20.1, False)]
)
def test_the_window_holds_its_ends(at: float, inside: bool) -> None:
    assert Window(10.0, 20.0).holds(at) is inside


def test_percentiles_of_samples() -> None:
    samples = [float(v) for v in range(1000, 0, -1)]  # any order
    assert p50_p99(samples) == {"n": 1000, "p50_ms": 500.0, "p99_ms": 990.0}
    assert p50_p99([]) == {"n": 0, "p50_ms": 0.0, "p99_ms": 0.0}
