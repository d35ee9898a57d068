"""The lease decision (control/leadership/decide.py), as a parameter table: acquire
when nobody holds a live lease (a new epoch, even for a lapsed term of my own), renew
my live lease, wait for another's, and when to look again."""

from __future__ import annotations

import pytest

from control.leadership.decide import Decision, Lease, decide, renew_every

ME, OTHER, NOW, TTL = "me", "other", 1000.0, 15.0
STEP = renew_every(TTL)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        pytest.param(None, Decision("acquire", Lease(ME, 1, NOW + TTL), NOW + STEP), id="none"),
        pytest.param(
            Lease(OTHER, 4, NOW - 0.1),
            Decision("acquire", Lease(ME, 5, NOW + TTL), NOW + STEP),
            id="other-lapsed",
        ),
        pytest.param(
            Lease(OTHER, 4, NOW),
            Decision("acquire", Lease(ME, 5, NOW + TTL), NOW + STEP),
            id="other-expires-now",
        ),
        pytest.param(
            Lease(ME, 4, NOW - 1),
            Decision("acquire", Lease(ME, 5, NOW + TTL), NOW + STEP),
            id="mine-lapsed-new-epoch",
        ),
        pytest.param(
            Lease(ME, 4, NOW + 2),
            Decision("renew", Lease(ME, 4, NOW + TTL), NOW + STEP),
            id="mine-live",
        ),
        pytest.param(
            Lease(OTHER, 4, NOW + 2),
            Decision("wait", Lease(OTHER, 4, NOW + 2), NOW + 2),
            id="other-live-expires-soon",
        ),
        pytest.param(
            Lease(OTHER, 4, NOW + 100),
            Decision("wait", Lease(OTHER, 4, NOW + 100), NOW + STEP),
            id="other-live-look-again",
        ),
    ],
)
def test_decide(row: Lease | None, expected: Decision) -> None:
    assert decide(row, ME, NOW, TTL) == expected


def test_renewal_leaves_two_chances_before_the_lease_lapses() -> None:
    assert 2 * renew_every(TTL) < TTL
