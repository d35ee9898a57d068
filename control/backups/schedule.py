"""Which users are due for a scheduled snapshot.

Contract: `due_for_snapshot(candidates, plans, now, limit=None)` is a pure function. A
candidate is due when it is running, has no snapshot in flight, and its last successful
snapshot is at least its plan's `backup_minutes` old (or it has none yet). A plan the
candidate names that is not configured any more falls back to `default`'s interval,
so a removed plan never stops a user's backups. Result: user ids, most overdue first
(never backed up before any that was), ties by user id; at most `limit` of them, so a
caller can spread the load of many users over several rounds.

`runs_left(candidate, plans, now, run_every)` is how many scheduler runs (one every
`run_every` seconds) remain before a due candidate has waited a whole interval more
(its snapshot is then an interval late): at least 1; 1 for one never backed up.
`steady_rate(candidates, plans, run_every)` is how many snapshots a run must ask for
on average to keep every running candidate on its interval (the sum of run_every /
interval). `snapshot_budget(runs_left, steady, cap)` is how many of the due users this
run asks for: the steady rate (so a fleet that keeps up asks for each user as it comes
due: the recovery point stays one interval), raised to what a backlog needs to serve
each due user within its runs left, taking the most urgent first every run (max over
k of ceil(k / runs left of the k-th most urgent): a burst after an outage is spread,
never left late), never more than are due, never above `cap`, so one run stays cheap.
With `cap` C and runs every T seconds, an interval of I seconds covers up to
C * I / T users.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from control.plans import DEFAULT_PLAN, Plan


@dataclass(frozen=True)
class Candidate:
    user_id: str
    plan: str
    state: str  # the user's state: only "running" users have live state to snapshot
    last_snapshot_at: float | None  # epoch seconds of the last successful snapshot
    in_flight: bool = False  # a snapshot was asked for and has not finished


def _interval(plans: Mapping[str, Plan], name: str) -> float:
    plan = plans.get(name) or plans.get("default") or DEFAULT_PLAN
    return plan.backup_minutes * 60.0


def due_for_snapshot(
    candidates: Iterable[Candidate],
    plans: Mapping[str, Plan],
    now: float,
    limit: int | None = None,
) -> list[str]:
    overdue: list[tuple[float, str]] = []
    for c in candidates:
        if c.state != "running" or c.in_flight:
            continue
        if c.last_snapshot_at is None:
            overdue.append((float("inf"), c.user_id))
            continue
        late = now - c.last_snapshot_at - _interval(plans, c.plan)
        if late >= 0:
            overdue.append((late, c.user_id))
    overdue.sort(key=lambda item: (-item[0], item[1]))
    chosen = overdue if limit is None else overdue[: max(0, limit)]
    return [user_id for _, user_id in chosen]


def runs_left(c: Candidate, plans: Mapping[str, Plan], now: float, run_every: float) -> int:
    if c.last_snapshot_at is None:
        return 1
    late_at = c.last_snapshot_at + 2 * _interval(plans, c.plan)  # due at one interval
    return max(1, math.floor((late_at - now) / max(run_every, 1e-9)))


def steady_rate(
    candidates: Iterable[Candidate], plans: Mapping[str, Plan], run_every: float
) -> float:
    return sum(run_every / _interval(plans, c.plan) for c in candidates if c.state == "running")


def snapshot_budget(runs_left: Iterable[int], steady: float, cap: int) -> int:
    ordered = sorted(max(1, r) for r in runs_left)
    need = max((math.ceil(k / r) for k, r in enumerate(ordered, start=1)), default=0)
    return max(0, min(cap, len(ordered), max(need, math.ceil(steady))))
