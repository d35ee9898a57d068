"""control/backups/: the pure backup decisions, the plans' backup interval, the backup
settings and the per-user repository password (control/keyring.py)."""

from __future__ import annotations

import base64

import pytest

from control.backups import (
    Candidate,
    FinalReason,
    Retention,
    RetentionError,
    UserBackupState,
    due_for_snapshot,
    final_cleared,
    final_snapshot_reason,
    parse_retention,
    repository_url,
)
from control.backups.repository import RepositoryError
from control.keyring import Keyring
from control.plans import DEFAULT_PLAN, Plan, PlanError, parse_plans
from control.settings import Settings, SettingsError

MIN = 60.0
NOW = 1_800_000_000.0
PLANS = {
    "default": DEFAULT_PLAN,
    "hourly": Plan("hourly", 1024, 0.5, 512, 5, backup_minutes=60),
}


def c(user: str, last: float | None, plan: str = "default", **kw: object) -> Candidate:
    return Candidate(user, plan, str(kw.get("state", "running")), last, bool(kw.get("busy")))


@pytest.mark.parametrize(
    ("candidates", "limit", "due"),
    [
        ([c("a", None)], None, ["a"]),  # never backed up: due at once
        ([c("a", NOW - 15 * MIN)], None, ["a"]),  # exactly the default 15 minutes
        ([c("a", NOW - 15 * MIN + 1)], None, []),
        ([c("a", NOW - 30 * MIN, "hourly")], None, []),  # the plan's own interval
        ([c("a", NOW - 60 * MIN, "hourly")], None, ["a"]),
        ([c("a", NOW - 15 * MIN, "gone")], None, ["a"]),  # a removed plan: default's interval
        ([c("a", None, state="suspended"), c("b", None, state="pending")], None, []),
        ([c("a", None, state="deprovisioned")], None, []),
        ([c("a", None, busy=True)], None, []),  # one in flight is not asked again
        # Most overdue first, never-backed-up before all, ties by id; the limit cuts the tail.
        ([c("b", NOW - 20 * MIN), c("a", NOW - 40 * MIN), c("z", None)], None, ["z", "a", "b"]),
        ([c("b", NOW - 20 * MIN), c("a", NOW - 20 * MIN)], None, ["a", "b"]),
        ([c("b", NOW - 20 * MIN), c("a", NOW - 40 * MIN), c("z", None)], 2, ["z", "a"]),
        ([c("a", None)], 0, []),
    ],
)
def test_which_users_are_due_for_a_scheduled_snapshot(
    candidates: list[Candidate], limit: int | None, due: list[str]
) -> None:
    assert due_for_snapshot(candidates, PLANS, NOW, limit) == due


def u(**kw: object) -> UserBackupState:
    return UserBackupState(user_id="u1", **{"state": "running", **kw})  # type: ignore[arg-type]


LEAD = 3600.0


@pytest.mark.parametrize(
    ("user", "reason"),
    [
        (u(), None),
        (u(last_snapshot_at=NOW - 10), None),
        (u(operator_requested_at=NOW - 5, last_snapshot_at=NOW - 10), FinalReason.OPERATOR),
        (u(operator_requested_at=NOW - 5, last_snapshot_at=NOW - 5), None),
        (u(operator_requested_at=NOW - 5), FinalReason.OPERATOR),
        (u(server_draining_since=NOW - 60, last_snapshot_at=NOW - 61), FinalReason.DRAIN),
        (u(server_draining_since=NOW - 60, last_snapshot_at=NOW - 30), None),
        # A cancelled user's retained data on a draining server is owed one too.
        (u(state="deprovisioned", server_draining_since=NOW - 60), FinalReason.DRAIN),
        # The operator's request is named first when both apply.
        (u(operator_requested_at=NOW, server_draining_since=NOW - 60), FinalReason.OPERATOR),
        # Retention ends in 2 h, outside the 1 h lead: nothing yet.
        (u(state="deprovisioned", purge_after=NOW + 2 * LEAD), None),
        (u(state="deprovisioned", purge_after=NOW + LEAD), FinalReason.RETENTION_ENDING),
        (u(state="deprovisioned", purge_after=NOW - 1), FinalReason.RETENTION_ENDING),
        (
            u(state="deprovisioned", purge_after=NOW + LEAD / 2, last_snapshot_at=NOW - LEAD),
            FinalReason.RETENTION_ENDING,  # that snapshot is older than the window
        ),
        (u(state="deprovisioned", purge_after=NOW + LEAD / 2, last_snapshot_at=NOW - 1), None),
        (u(state="running", purge_after=NOW - 1), None),  # only cancelled users are purged
    ],
)
def test_final_snapshot_triggers(user: UserBackupState, reason: FinalReason | None) -> None:
    assert final_snapshot_reason(user, NOW, LEAD) == reason


@pytest.mark.parametrize(
    ("asked", "done", "waived", "ok"),
    [
        (None, None, None, False),  # nothing asked yet
        (None, NOW, None, False),  # a scheduled snapshot is not the final one
        (NOW, None, None, False),
        (NOW, NOW - 1, None, False),  # done before it was asked for
        (NOW, NOW, None, True),
        (NOW, NOW + 60, None, True),
        # cancelled, resumed, cancelled again: the first final snapshot is stale
        (NOW + 3600, NOW + 60, None, False),
        (None, None, NOW, True),  # the operator waived it
        (NOW, None, NOW + 1, True),
        (NOW + 3600, None, NOW, False),  # a waiver from before the latest cancellation
    ],
)
def test_the_purge_waits_for_the_latest_final_snapshot(
    asked: float | None, done: float | None, waived: float | None, ok: bool
) -> None:
    assert final_cleared(asked, done, waived) is ok


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hourly=24,daily=7,weekly=4", Retention(24, 7, 4)),
        (" daily=7 , hourly=1 ", Retention(1, 7, 0)),
        ("weekly=52", Retention(0, 0, 52)),
        ("hourly=0,daily=1", Retention(0, 1, 0)),
        ("hourly=10000", Retention(10000, 0, 0)),
        ("", "expected name=count"),
        ("hourly=24,", "expected name=count"),
        ("hourly=24;daily=7", "expected name=count"),
        ("monthly=12", "expected name=count"),
        ("hourly=-1", "expected name=count"),
        ("hourly=1.5", "expected name=count"),
        ("Hourly=1", "expected name=count"),
        ("hourly=24,hourly=1", "hourly given twice"),
        ("hourly=10001", "at most 10000"),
        ("hourly=0,daily=0", "keeps no snapshot"),
    ],
)
def test_retention_is_parsed_strictly(text: str, expected: Retention | str) -> None:
    if isinstance(expected, Retention):
        assert parse_retention(text) == expected
    else:
        with pytest.raises(RetentionError, match=expected):
            parse_retention(text)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("https://fsn1.example.com", "cf-backups", "prod", "alice"), "s3:https://fsn1.example.com/cf-backups/prod/alice"),
        (("http://127.0.0.1:9000/", "b-1.x", "default", "u_1.a-b"), "s3:http://127.0.0.1:9000/b-1.x/default/u_1.a-b"),
        (("https://k:s@h.example.com", "bkt", "c", "u"), RepositoryError),  # credentials
        (("ftp://h.example.com", "bkt", "c", "u"), RepositoryError),
        (("https://h.example.com/bkt", "bkt", "c", "u"), RepositoryError),  # path in endpoint
        (("https://h.example.com", "B", "c", "u"), RepositoryError),
        (("https://h.example.com", "bkt", "c", "../other"), RepositoryError),
        (("https://h.example.com", "bkt", "c/d", "u"), RepositoryError),
        (("https://h.example.com", "bkt", "c", ""), RepositoryError),
    ],
)  # fmt: skip
def test_repository_url(args: tuple[str, str, str, str], expected: str | type) -> None:
    if isinstance(expected, str):
        assert repository_url(*args) == expected
    else:
        with pytest.raises(RepositoryError):
            repository_url(*args)


MASTER = "m" * 40


def test_backup_password_is_stable_per_user_distinct_and_not_the_master() -> None:
    ring = Keyring(MASTER)
    a, b = ring.backup_password("alice"), ring.backup_password("bob")
    assert a == Keyring(MASTER).backup_password("alice")  # stable across restarts
    assert a != b and a != Keyring("n" * 40).backup_password("alice")
    assert MASTER not in a and len(base64.urlsafe_b64decode(a + "=")) == 32
    # Not any other derivation of the same master (bootstrap secrets use another key).
    assert a != ring.bootstrap_secret("alice")
    # The documented derivation, so another implementation could recompute it.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    raw = HKDF(hashes.SHA256(), 32, None, b"clawfleet backup repository v1:alice").derive(
        MASTER.encode()
    )
    assert a == base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("body", "minutes"),
    [
        ('{"p": {"memory_mb": 512, "cpus": 1, "pids": 64, "disk_gb": 5}}', 15),
        ('{"p": {"memory_mb": 512, "cpus": 1, "pids": 64, "disk_gb": 5, "backup_minutes": 5}}', 5),
        ('{"p": {"memory_mb": 512, "cpus": 1, "pids": 64, "disk_gb": 5, "backup_minutes": 10080}}', 10080),
        ('{"p": {"memory_mb": 512, "cpus": 1, "pids": 64, "disk_gb": 5, "backup_minutes": 4}}', None),
        ('{"p": {"memory_mb": 512, "cpus": 1, "pids": 64, "disk_gb": 5, "backup_minutes": 10081}}', None),
        ('{"p": {"memory_mb": 512, "cpus": 1, "pids": 64, "disk_gb": 5, "backup_minutes": 7.5}}', None),
        ('{"p": {"memory_mb": 512, "cpus": 1, "pids": 64, "disk_gb": 5, "backup_minutes": true}}', None),
    ],
)  # fmt: skip
def test_plan_backup_minutes_is_optional_and_bounded(body: str, minutes: int | None) -> None:
    if minutes is None:
        with pytest.raises(PlanError, match="backup_minutes"):
            parse_plans(body)
    else:
        assert parse_plans(body)["p"].backup_minutes == minutes
    assert DEFAULT_PLAN.backup_minutes == 15


GOOD = {"ADMIN_TOKEN": "a" * 32, "INTERNAL_SECRET": "s" * 32}
S3 = {
    "BACKUP_S3_ENDPOINT": "https://fsn1.example.com",
    "BACKUP_S3_BUCKET": "cf-backups",
    "BACKUP_S3_ACCESS_KEY": "AK-visible-nowhere",
    "BACKUP_S3_SECRET_KEY": "SK-visible-nowhere",
}


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({}, None),  # no endpoint: backups off, nothing else needed
        (S3, None),
        ({**S3, "BACKUP_S3_BUCKET": ""}, "BACKUP_S3_BUCKET: required"),
        ({**S3, "BACKUP_S3_ACCESS_KEY": ""}, "BACKUP_S3_ACCESS_KEY: required"),
        ({**S3, "BACKUP_S3_SECRET_KEY": ""}, "BACKUP_S3_SECRET_KEY: required"),
        ({**S3, "BACKUP_S3_ENDPOINT": "fsn1.example.com"}, "BACKUP_S3_ENDPOINT"),
        ({**S3, "BACKUP_S3_BUCKET": "Bad_Bucket"}, "BACKUP_S3_BUCKET: expected an S3 bucket"),
        ({"BACKUP_RETENTION": "daily=7,daily=3"}, "BACKUP_RETENTION: daily given twice"),
    ],
)
def test_backup_settings(env: dict[str, str], error: str | None) -> None:
    if error is None:
        s = Settings.from_env({**GOOD, **env})
        assert s.backups_enabled is bool(env)
        assert s.backup_retention == Retention(24, 7, 4)
        assert "visible-nowhere" not in repr(s)
    else:
        with pytest.raises(SettingsError, match=error) as info:
            Settings.from_env({**GOOD, **env})
        assert "visible-nowhere" not in str(info.value)
