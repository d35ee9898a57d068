"""What the status page tells a buyer, decided from what the control plane knows
(pure: no I/O, no clock; docs/portal.md).

Contract:
- The steps are STEPS: payment confirmed → placing → starting → ready. `progress`
  gives the current one (`step`; "ready" when all are done), or "expired" (the
  Checkout ended unpaid) or "stopped" (the agent exists but is not meant to run, e.g.
  suspended), with a plain-words `message` for a non-technical buyer; "contact
  support" names SUPPORT_EMAIL when one is set (`Facts.support_email`).
- Payment is confirmed when Stripe's webhook created the user (the webhook is the only
  source of truth; the Checkout's redirect proves nothing). Placing: the user waits for
  its subscription to start or for room on a server. Starting: the user is on a server
  and its container is coming up. Ready: it runs.
- While placing, when a server the autoscaler created has not started yet, the
  message says a new server is being prepared, with `estimate_seconds` (the time left
  until that server's typical start, never below zero: past it the message says it is
  taking longer than usual) and `estimate_basis`, where that typical start comes from.
- `typical_boot(samples, fallback)`: the median of the fleet's measured start-ups
  (creation to registration) and how it was measured, or the configured fallback when
  none were measured.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Step = Literal["payment", "placing", "starting", "ready", "expired", "stopped"]
STEPS: tuple[Step, ...] = ("payment", "placing", "starting", "ready")


@dataclass(frozen=True)
class Boot:
    seconds: float
    basis: str


@dataclass(frozen=True)
class Facts:
    checkout_state: str  # open | paid | expired
    user_state: str | None  # None: Stripe's webhook has not created the user yet
    awaiting_subscription: bool  # created, but its subscription does not let it run yet
    booting_since: float | None  # creation time of the oldest server not started yet
    boot: Boot
    now: float
    support_email: str = ""  # SUPPORT_EMAIL: where "contact support" points, if set


@dataclass(frozen=True)
class Progress:
    step: Step
    message: str
    estimate_seconds: int | None = None
    estimate_basis: str | None = None


def typical_boot(samples: Sequence[float], fallback: float) -> Boot:
    measured = [s for s in samples if s > 0]
    if not measured:
        return Boot(fallback, "the operator's setting (no server start measured yet)")
    plural = "s" if len(measured) > 1 else ""
    return Boot(
        statistics.median(measured),
        f"the median start-up of this service's last {len(measured)} new server{plural}",
    )


def progress(facts: Facts) -> Progress:
    if facts.user_state is None:
        if facts.checkout_state == "expired":
            return Progress(
                "expired", "This checkout ended without a payment. Nothing was charged."
            )
        return Progress("payment", "Waiting for Stripe to confirm your payment…")
    if facts.user_state == "running":
        return Progress("ready", "Your agent is ready.")
    if facts.user_state == "provisioning":
        return Progress("starting", "Payment confirmed. Your agent is starting…")
    if facts.user_state != "pending":
        return Progress("stopped", f"Your agent is not running right now. {_contact(facts)}")
    if facts.awaiting_subscription:
        return Progress("placing", "Payment confirmed. Starting your subscription…")
    if facts.booting_since is None:
        return Progress("placing", "Payment confirmed. Finding room for your agent…")
    return _new_server(facts.booting_since, facts.boot, facts.now)


def _contact(facts: Facts) -> str:
    if facts.support_email:
        return f"Please contact support at {facts.support_email}."
    return "Please contact support."


def _new_server(since: float, boot: Boot, now: float) -> Progress:
    left = max(0, math.ceil(since + boot.seconds - now))
    if left == 0:
        message = (
            "A new server is being prepared for your agent. It is taking longer than "
            "usual; it should be ready any moment."
        )
    else:
        message = f"A new server is being prepared for your agent: about {_duration(left)} left."
    return Progress("placing", message, estimate_seconds=left, estimate_basis=boot.basis)


def _duration(seconds: int) -> str:
    if seconds < 90:
        return "a minute"
    return f"{round(seconds / 60)} minutes"
