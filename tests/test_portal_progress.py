"""The status page's decision (control/portal/progress.py), as a table."""

from __future__ import annotations

import pytest

from control.portal.progress import Boot, Facts, progress, typical_boot

BOOT = Boot(300.0, "measured")
NOW = 10_000.0


def facts(
    user: str | None = "pending",
    checkout: str = "paid",
    awaiting: bool = False,
    booting_since: float | None = None,
) -> Facts:
    return Facts(checkout, user, awaiting, booting_since, BOOT, NOW)


@pytest.mark.parametrize(
    ("given", "step", "words", "estimate"),
    [
        (facts(user=None, checkout="open"), "payment", "Waiting for Stripe", None),
        # The redirect back from Stripe proves nothing: only the webhook's user does.
        (facts(user=None, checkout="paid"), "payment", "Waiting for Stripe", None),
        (facts(user=None, checkout="expired"), "expired", "Nothing was charged", None),
        (facts(awaiting=True), "placing", "Starting your subscription", None),
        (facts(), "placing", "Finding room", None),
        (facts(booting_since=NOW - 60), "placing", "about 4 minutes left", 240),
        (facts(booting_since=NOW - 250), "placing", "about a minute left", 50),
        (facts(booting_since=NOW - 301), "placing", "longer than usual", 0),
        (facts(user="provisioning"), "starting", "starting", None),
        (facts(user="running"), "ready", "ready", None),
        (facts(user="running", checkout="expired"), "ready", "ready", None),
        (facts(user="suspended"), "stopped", "not running", None),
        (facts(user="deprovisioned"), "stopped", "not running", None),
    ],
)
def test_progress(given: Facts, step: str, words: str, estimate: int | None) -> None:
    shown = progress(given)
    assert shown.step == step and words in shown.message
    assert shown.estimate_seconds == estimate
    assert (shown.estimate_basis is not None) == (estimate is not None)


@pytest.mark.parametrize(
    ("samples", "seconds", "basis"),
    [
        ([], 180.0, "the operator's setting"),
        ([0.0, -5.0], 180.0, "the operator's setting"),  # clock skew is no measurement
        ([100.0], 100.0, "last 1 new server"),
        ([100.0, 400.0, 130.0], 130.0, "last 3 new servers"),
        ([100.0, 200.0], 150.0, "last 2 new servers"),
    ],
)
def test_typical_boot(samples: list[float], seconds: float, basis: str) -> None:
    boot = typical_boot(samples, 180.0)
    assert boot.seconds == seconds and basis in boot.basis
