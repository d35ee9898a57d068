"""Worker liveness: provisioning → active → unhealthy → dead.

`next_status` is the pure rule. A worker is unhealthy once it has missed three of
its heartbeat intervals and dead once DEAD_AFTER has passed. `last_seen` is never
earlier than the control plane's own start: after a restart every worker gets a
fresh grace, so a restart can never mass-declare the fleet dead.
"""

from __future__ import annotations

LIVE_STATUSES = ("active", "unhealthy")
MISSED_INTERVALS = 3


def next_status(
    status: str,
    last_seen: float,
    now: float,
    *,
    interval: float,
    dead_after: float,
    started_at: float,
) -> str:
    if status not in LIVE_STATUSES:
        return status
    age = now - max(last_seen, started_at)
    if age > dead_after:
        return "dead"
    if age > MISSED_INTERVALS * interval:
        return "unhealthy"
    return "active"


def heartbeat_interval(
    base: float, live_workers: int, *, max_rate: float, dead_after: float
) -> float:
    """Interval handed to workers: the base, stretched when the fleet is so large that
    the base would exceed `max_rate` heartbeats per second, and always short enough
    that three missed intervals come well before DEAD_AFTER."""
    stretched = max(base, live_workers / max_rate)
    return min(stretched, dead_after / (MISSED_INTERVALS + 1))
