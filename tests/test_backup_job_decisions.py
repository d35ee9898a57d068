"""control/backup_jobs/decide.py: what reports, silence and failures make of a backup
job, as parameter tables."""

from __future__ import annotations

import pytest

from control.backup_jobs.decide import (
    JOB_TIMEOUT,
    RETRY_BASE,
    RETRY_CAP,
    History,
    Job,
    Report,
    Update,
    history,
    kept_for,
    on_report,
    retry_delay,
    stale,
)
from control.backups.retention import Retention

NOW = 1_000_000.0
SNAP = "0123abcd"
SCHEDULED = Job("snapshot", "scheduled", "pending", attempts=1)
OPERATOR = Job("snapshot", "operator", "running")
RESTORE = Job("restore", "operator", "running")


@pytest.mark.parametrize(
    ("job", "report", "expected"),
    [
        (SCHEDULED, Report("running"), Update("running")),
        (
            SCHEDULED,
            Report("done", SNAP, 42),
            Update("done", finished=True, snapshot_id=SNAP, bytes_added=42),
        ),
        # A snapshot the control plane could not name is no snapshot.
        (
            SCHEDULED,
            Report("done"),
            Update(
                "failed",
                finished=True,
                error="the worker reported the snapshot done without its id",
                retry_after=NOW + retry_delay(1),
            ),
        ),
        # A restore has no snapshot of its own, whatever the worker says.
        (RESTORE, Report("done", SNAP, 9), Update("done", finished=True)),
        (
            SCHEDULED,
            Report("failed", error="boom"),
            Update("failed", finished=True, error="boom", retry_after=NOW + retry_delay(1)),
        ),
        (
            OPERATOR,
            Report("failed", error="boom"),
            Update("failed", finished=True, error="boom"),  # the operator asks again
        ),
        (
            OPERATOR,
            Report("failed"),
            Update("failed", finished=True, error="the worker reported a failure"),
        ),
        # Finished is final: a late or forged report changes nothing.
        (Job("snapshot", "scheduled", "done"), Report("failed", error="x"), None),
        (Job("snapshot", "scheduled", "failed"), Report("done", SNAP), None),
    ],
)
def test_a_report_changes_only_an_open_job(
    job: Job, report: Report, expected: Update | None
) -> None:
    assert on_report(job, report, NOW) == expected


@pytest.mark.parametrize(
    ("attempts", "rand", "expected"),
    [
        (1, 1.0, RETRY_BASE),
        (1, 0.0, RETRY_BASE / 2),
        (2, 1.0, RETRY_BASE * 2),
        (3, 1.0, RETRY_BASE * 4),
        (50, 1.0, RETRY_CAP),
        (0, 1.0, RETRY_BASE),  # never below the first
    ],
)
def test_retries_back_off_by_attempts_in_a_row(attempts: int, rand: float, expected: float) -> None:
    assert retry_delay(attempts, rand) == expected


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        (Job("snapshot", "scheduled", "pending", created_at=NOW - JOB_TIMEOUT), True),
        (Job("snapshot", "scheduled", "pending", created_at=NOW - JOB_TIMEOUT + 1), False),
        # A long restic run that keeps reporting `running` is not silent.
        (Job("snapshot", "scheduled", "running", created_at=0, reported_at=NOW - 60), False),
        (Job("snapshot", "scheduled", "running", created_at=0, reported_at=0), True),
        (Job("snapshot", "scheduled", "done", created_at=0), False),
        (Job("snapshot", "scheduled", "failed", created_at=0), False),
    ],
)
def test_an_open_job_no_report_mentions_for_the_timeout_is_stale(job: Job, expected: bool) -> None:
    assert stale(job, NOW) is expected


@pytest.mark.parametrize(
    ("latest", "expected"),
    [
        (None, History(5.0)),
        (Job("snapshot", "scheduled", "pending"), History(5.0, in_flight=True, open=True)),
        (Job("restore", "operator", "running"), History(5.0, in_flight=True, open=True)),
        (Job("snapshot", "scheduled", "done", attempts=3), History(5.0)),
        # Failed: waits out its back-off, then the next try counts one more attempt.
        (
            Job("snapshot", "scheduled", "failed", attempts=2, retry_after=NOW + 1),
            History(5.0, in_flight=True, attempts=3),
        ),
        (
            Job("snapshot", "final-drain", "failed", attempts=2, retry_after=NOW),
            History(5.0, attempts=3),
        ),
        # An operator's failed job is not retried and does not hold the schedule back.
        (Job("restore", "operator", "failed", attempts=1), History(5.0)),
    ],
)
def test_a_users_latest_job_says_whether_another_may_start(
    latest: Job | None, expected: History
) -> None:
    assert history(5.0, latest, NOW) == expected


@pytest.mark.parametrize(
    ("retention", "days"),
    [
        (Retention(hourly=24, daily=7, weekly=4), 29),
        (Retention(hourly=48), 3),
        (Retention(daily=10, weekly=1), 11),
        (Retention(hourly=1), 1 + 1 / 24),
    ],
)
def test_finished_jobs_are_kept_as_long_as_their_snapshots_may_be(
    retention: Retention, days: float
) -> None:
    assert kept_for(retention) == pytest.approx(days * 86400)
