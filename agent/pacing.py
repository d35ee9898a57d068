"""When the daemon's loops act next (agent/daemon.py): pure rules, tested with tables.

Contract: `next_beat(interval, beat)` is the wait before the next heartbeat, shorter
while a container starts; `next_pass(interval, retry)` the wait before the next
reconcile pass, shorter when a failed user is due sooner, never under MIN_PASS.
"""

from __future__ import annotations

from shared.protocol import Heartbeat

MIN_PASS = 0.5  # seconds: the shortest wait between reconcile passes


def next_beat(interval: float, beat: Heartbeat) -> float:
    """Seconds to the next heartbeat: a tenth of the interval (at least 1 s) while a
    container is starting, so the control plane (and the customer waiting for it) hears
    it is healthy within a second or so, not up to an interval later. The fleet-wide
    budget still holds: the control plane stretches the interval for large fleets, and
    this shortens it only as long as a start lasts."""
    if any(c.health == "starting" for c in beat.containers):
        return min(interval, max(1.0, interval / 10))
    return interval


def next_pass(interval: float, retry: float | None) -> float:
    """Seconds to the next reconcile pass: the interval, or sooner when a failed user
    is due again (`Reconciler.next_retry`), as the kubelet requeues a pod at its
    backoff. A move's spec can arrive a moment before its volume's device appears; the
    mount is then retried within its backoff, not a whole interval later. Never less
    than MIN_PASS, so a failure due at once cannot spin the loop."""
    if retry is None:
        return interval
    return min(interval, max(MIN_PASS, retry))
