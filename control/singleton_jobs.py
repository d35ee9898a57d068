"""The singletons' scheduler jobs (control/app.py wires them): periodic rounds, and the
`*-now` jobs that run one at once.

Contract:
- `every(app, seconds, job_id, job)`: a periodic job, never twice at a time, run only
  while this replica leads (control/leadership/ `guard`).
- `dns_now`, `firewall_now`, `autoscale_now` (each `app` only; `NOW` names them): that
  job now, not at its next tick, once the scheduler runs; like every singleton it runs
  only while this replica leads. On a follower on PostgreSQL, the autoscaler run is
  asked of the leader instead (control/leadership/nudges.py `JOBS`, through the app's
  `NUDGER`): the leader's next scheduled run may be AUTOSCALE_INTERVAL away.
- `nudged(app, job_id)`: another replica asks for `job_id` now (the wake bus hears it).
  It runs only while this replica leads, and is never asked onward: a nudge travels
  one hop at most, or two when leadership changes under it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from control.api.agent_wakes import NUDGER
from control.appkeys import DNS_SYNC, FIREWALL_SYNC, LEADERSHIP, SCALER, SCHEDULER
from control.leadership import nudges
from control.leadership.leadership import Job


def every(
    app: web.Application, seconds: float, job_id: str, job: Job, now: bool = True, **kwargs: Any
) -> None:
    """First run at once (`now`) or after one interval."""
    app[SCHEDULER].add_job(
        app[LEADERSHIP].guard(job),
        "interval",
        seconds=seconds,
        id=job_id,
        kwargs=kwargs,
        max_instances=1,
        coalesce=True,
        next_run_time=datetime.now() if now else datetime.now() + timedelta(seconds=seconds),
    )


def _now(app: web.Application, job_id: str, job: Job, **options: Any) -> None:
    if job_id in nudges.JOBS and NUDGER in app and not app[LEADERSHIP].leads():
        app[NUDGER].nudge(job_id)
    elif (scheduler := app[SCHEDULER]).running:
        scheduler.add_job(app[LEADERSHIP].guard(job), id=job_id, replace_existing=True, **options)


def dns_now(app: web.Application) -> None:
    """Assignments changed (or DNS was verified late): a DNS round now."""
    _now(app, "dns-now", app[DNS_SYNC].tick, max_instances=2)


def firewall_now(app: web.Application) -> None:
    """The provider was validated late: a firewall round now."""
    _now(app, "firewall-now", app[FIREWALL_SYNC].tick)


def autoscale_now(app: web.Application) -> None:
    """Run the autoscaler now (Fleet's `on_pending`), not as a scheduled sweep (no orphan
    sightings). One may wait behind a run in progress (Scaler's lock), so a user left
    pending during a run is still seen by a run after it."""
    _now(app, "autoscale-now", app[SCALER].tick, kwargs={"scheduled": False}, max_instances=2)


NOW: dict[str, Callable[[web.Application], None]] = {
    "autoscale-now": autoscale_now,
    "dns-now": dns_now,
    "firewall-now": firewall_now,
}


def nudged(app: web.Application, job_id: str) -> None:
    if app[LEADERSHIP].leads() and job_id in nudges.JOBS:
        NOW[job_id](app)
