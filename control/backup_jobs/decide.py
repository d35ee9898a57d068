"""What a worker's report, a worker's silence and a failure make of a backup job: pure
functions tested with parameter tables.

Contract:
- `on_report(job, report, now)` is the change a worker's report makes to a job it was
  given, or None when there is none: a finished job (done, failed) never changes
  again. Every report of an open job counts as hearing of it (`stale`). `running`
  marks the job started; `done` finishes it with the snapshot's id and
  bytes added (a snapshot reported done without an id is failed instead: the control
  plane lists only snapshots it can name); `failed` finishes it with the error and,
  for an automatic job, the moment another may be tried (`retry_delay`).
- `retry_delay(attempts, rand)`: shared/backoff.py, RETRY_BASE doubling up to RETRY_CAP
  by the number of attempts in a row that failed; operator jobs are never retried.
- `stale(job, now)`: an open job no report mentioned for JOB_TIMEOUT seconds.
- `kept_for(retention)`: how long a finished job is kept: as long as restic may keep
  the oldest snapshot BACKUP_RETENTION keeps, and a day more.
- `forgotten(listed, kept)`: which of a user's listed snapshots (job id, snapshot id)
  restic's retention forgot, from the short ids a done snapshot's report says the
  repository kept; none when it said nothing (retention did not run or kept too many
  to say). A snapshot id matches a kept short id by prefix; the caller passes only
  snapshots listed before the reporting job was asked for, which its prune saw.
- `history(last_done, latest, now)`: what a user's jobs say for the next one: in flight
  while its latest job is open or failed less than its back-off ago (an operator may
  ask during a back-off, not while a job is open), and the attempt number of the next
  automatic job (1 after a success or an operator's job).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from control.backups.retention import Retention
from shared.backoff import backoff_delay

Kind = Literal["snapshot", "restore"]
# final-waived: no job, the operator's record that a volume may go without its final snapshot
Reason = Literal[
    "scheduled", "final-drain", "final-retention", "operator", "final-waived", "move"
]  # move: a move to another location's snapshot and restore (control/volumes/relocate.py)
State = Literal["pending", "running", "done", "failed"]
OPEN: tuple[State, ...] = ("pending", "running")
AUTOMATIC: tuple[Reason, ...] = ("scheduled", "final-drain", "final-retention", "move")
JOB_TIMEOUT = 30 * 60.0
RETRY_BASE = 60.0
RETRY_CAP = 6 * 3600.0
DAY = 86400.0


@dataclass(frozen=True)
class Job:
    kind: Kind
    reason: Reason
    state: State
    attempts: int = 1
    created_at: float = 0.0
    reported_at: float | None = None
    retry_after: float | None = None


@dataclass(frozen=True)
class Report:
    state: Literal["running", "done", "failed"]
    snapshot_id: str = ""
    bytes_added: int = 0
    error: str = ""
    kept: tuple[str, ...] = ()  # short ids of the snapshots the repository kept


@dataclass(frozen=True)
class Update:
    state: State
    finished: bool = False
    snapshot_id: str | None = None
    bytes_added: int | None = None
    error: str | None = None
    retry_after: float | None = None


def retry_delay(attempts: int, rand: float = 0.5) -> float:
    return backoff_delay(max(0, attempts - 1), base=RETRY_BASE, cap=RETRY_CAP, rand=rand)


def failed(job: Job, error: str, now: float, rand: float = 0.5) -> Update:
    retry = now + retry_delay(job.attempts, rand) if job.reason in AUTOMATIC else None
    return Update("failed", finished=True, error=error, retry_after=retry)


def on_report(job: Job, report: Report, now: float, rand: float = 0.5) -> Update | None:
    if job.state not in OPEN:
        return None
    if report.state == "running":
        return Update("running")
    if report.state == "failed":
        return failed(job, report.error or "the worker reported a failure", now, rand)
    if job.kind == "snapshot" and not report.snapshot_id:
        return failed(job, "the worker reported the snapshot done without its id", now, rand)
    return Update(
        "done",
        finished=True,
        snapshot_id=report.snapshot_id if job.kind == "snapshot" else None,
        bytes_added=max(0, report.bytes_added) if job.kind == "snapshot" else None,
    )


def forgotten(listed: Sequence[tuple[str, str]], kept: Collection[str]) -> list[str]:
    """The job ids among `listed` (job id, snapshot id) whose snapshot is not kept."""
    if not kept:
        return []
    return [job_id for job_id, snap in listed if not any(snap.startswith(k) for k in kept)]


def stale(job: Job, now: float) -> bool:
    heard = job.reported_at if job.reported_at is not None else job.created_at
    return job.state in OPEN and now - heard >= JOB_TIMEOUT


@dataclass(frozen=True)
class History:
    last_done: float | None = None  # when the user's last snapshot finished
    in_flight: bool = False  # no automatic job now: one is open or backing off
    attempts: int = 1  # of the next automatic job
    open: bool = False  # a job is pending or running: no other job now, not even asked


def history(last_done: float | None, latest: Job | None, now: float) -> History:
    if latest is None:
        return History(last_done)
    if latest.state in OPEN:
        return History(last_done, in_flight=True, open=True)
    if latest.state != "failed":
        return History(last_done)
    waiting = latest.retry_after is not None and latest.retry_after > now
    again = latest.attempts + 1 if latest.reason in AUTOMATIC else 1
    return History(last_done, in_flight=waiting, attempts=again)


def kept_for(retention: Retention) -> float:
    oldest = max(retention.weekly * 7 * DAY, retention.daily * DAY, retention.hourly * 3600.0)
    return oldest + DAY
