"""agent/backups.py against the real restic binary and a real S3 server (moto's server
mode, tests/s3server.py) on 127.0.0.1: one server per session, one repository per test."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.backup_errors import BackupError, RestoreRefused, WrongPassword
from agent.backups import HOST, Repository, Restic, RetentionPolicy
from tests.backup_state import change_one_file, make_state
from tests.s3server import ACCESS_KEY, S3, SECRET_KEY, s3_server

pytestmark = pytest.mark.skipif(
    shutil.which("restic") is None and os.environ.get("CI") != "true",
    reason="restic is not installed (apt-get install restic; .ci/run does)",
)
PASSWORD = "repository-password-" + uuid.uuid4().hex


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    with s3_server() as server:
        yield server


@pytest.fixture
def repo(s3: S3) -> Repository:
    url = s3.repo_url("clawfleet-backups", f"test/{uuid.uuid4().hex}")
    return Repository(url=url, password=PASSWORD, access_key=ACCESS_KEY, secret_key=SECRET_KEY)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


async def test_init_twice_is_idempotent(repo: Repository) -> None:
    restic = Restic(repo)
    assert await restic.init_if_missing() is True
    assert await restic.init_if_missing() is False
    assert await restic.snapshots() == []


async def test_second_snapshot_adds_only_the_change_and_restores_a_point_in_time(
    repo: Repository, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    files = make_state(state, 20 * 1024 * 1024)
    before = tree(state)
    restic = Restic(repo, cache_dir=tmp_path / "cache")
    await restic.init_if_missing()
    first = await restic.snapshot(state, ("scheduled",))
    changed = change_one_file(state)
    second = await restic.snapshot(state, ("scheduled",))

    assert first.files_new == files and first.data_added > 1024 * 1024
    assert (second.files_new, second.files_changed) == (0, 1)
    # Deduplicated: the second snapshot stores the changed file's chunk and new trees only.
    assert second.data_added * 50 < first.data_added, (first.data_added, second.data_added)
    listed = await restic.snapshots()
    assert [s.id[:8] for s in listed] == [first.snapshot_id[:8], second.snapshot_id[:8]]
    assert listed[0].tags == ["scheduled"]

    target = tmp_path / "restored"
    await restic.restore(listed[0].id, target)
    restored = tree(target)
    assert restored == before  # the first point in time, not the latest
    assert restored[str(changed.relative_to(state))] != changed.read_bytes()


async def test_restore_refuses_a_non_empty_target_and_replaces_only_when_told(
    repo: Repository, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    (state / "sub").mkdir(parents=True)
    (state / "sub" / "config.json").write_text('{"v": 1}')
    restic = Restic(repo)
    await restic.init_if_missing()
    snap = await restic.snapshot(state)
    target = tmp_path / "volume"
    target.mkdir()
    (target / "newer.md").write_text("keep me unless replaced")

    with pytest.raises(RestoreRefused):
        await restic.restore(snap.snapshot_id, target)
    assert tree(target) == {"newer.md": b"keep me unless replaced"}

    # A restore that fails (no such snapshot) leaves the target as it was, even with replace.
    with pytest.raises(BackupError):
        await restic.restore("deadbeef", target, replace=True)
    assert sorted(p.name for p in target.iterdir()) == ["newer.md"]

    await restic.restore(snap.snapshot_id, target, replace=True)
    assert tree(target) == {"sub/config.json": b'{"v": 1}'}
    assert sorted(p.name for p in target.iterdir()) == ["sub"]  # no staging left behind


async def test_wrong_password_is_a_clear_error_without_the_password(
    repo: Repository, tmp_path: Path
) -> None:
    await Restic(repo).init_if_missing()
    wrong = Repository(
        url=repo.url, password="not-the-" + PASSWORD, access_key=ACCESS_KEY, secret_key=SECRET_KEY
    )
    for call in (Restic(wrong).snapshots(), Restic(wrong).init_if_missing()):
        with pytest.raises(WrongPassword) as info:
            await call
        text = f"{info.value} {info.value.message} {info.value!r}"
        assert "wrong repository password" in text
        assert PASSWORD not in text and SECRET_KEY not in text
    assert await Restic(repo).snapshots() == []  # still the original repository


async def test_forget_prune_keeps_what_the_policy_says(repo: Repository, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    restic = Restic(repo)
    await restic.init_if_missing()
    times = [
        datetime(2026, 11, 30, 10, 0, tzinfo=UTC),
        datetime(2026, 11, 30, 10, 30, tzinfo=UTC),  # same hour as 10:00: last of its hour
        datetime(2026, 11, 30, 12, 0, tzinfo=UTC),
        datetime(2026, 12, 1, 9, 0, tzinfo=UTC),
    ]
    ids = []
    for n, at in enumerate(times):
        (state / "note.md").write_text(f"version {n}")
        ids.append((await restic.snapshot(state, at=at)).snapshot_id)

    result = await restic.forget_prune(RetentionPolicy(hourly=2, daily=2, weekly=0))
    # Hourly keeps 12:00 and 09:00; daily keeps the last of each day (the same two) ...
    # so 10:30 is kept by no rule; 2 hourly + 2 daily reach back no further than 12:00.
    kept = {s.id[:8] for s in await restic.snapshots()}
    assert kept == {ids[2][:8], ids[3][:8]}
    assert {i[:8] for i in result.kept} == kept
    assert {i[:8] for i in result.removed} == {ids[0][:8], ids[1][:8]}

    target = tmp_path / "after-prune"
    await restic.restore(ids[2], target)
    assert (target / "note.md").read_text() == "version 2"


async def test_argv_never_carries_a_secret_and_the_environment_is_allow_listed(
    repo: Repository, tmp_path: Path
) -> None:
    """A wrapper records the real /proc/<pid>/cmdline and environment names of every
    restic process, then execs restic (same pid)."""
    log = tmp_path / "cmdlines"
    wrapper = tmp_path / "restic-wrapper"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"tr '\\0' ' ' < /proc/$$/cmdline >> {log}; echo >> {log}\n"
        f"tr '\\0' '\\n' < /proc/$$/environ | cut -d= -f1 >> {log}.env\n"
        f'exec {shutil.which("restic") or "restic"} "$@"\n'
    )
    wrapper.chmod(0o700)
    state = tmp_path / "state"
    state.mkdir()
    (state / "a.json").write_text("{}")
    restic = Restic(repo, binary=str(wrapper))
    await restic.init_if_missing()
    snap = await restic.snapshot(state, ("t1",))
    await restic.snapshots()
    await restic.forget_prune(RetentionPolicy(hourly=1, daily=0, weekly=0))
    await restic.restore(snap.snapshot_id, tmp_path / "out")

    lines = log.read_text().splitlines()
    assert len(lines) == 6 and any(" backup . " in line for line in lines)
    for line in lines:
        assert PASSWORD not in line and SECRET_KEY not in line and ACCESS_KEY not in line
    names = set(log.with_suffix(".env").read_text().split())
    assert {"RESTIC_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= names
    assert names <= {"RESTIC_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "TZ"} | {
        "PATH", "HOME", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR", "PWD", "OLDPWD",
    }  # fmt: skip
    assert f"--host {HOST}" in " ".join(lines)


async def test_errors_are_scrubbed_of_secrets_and_bounded(repo: Repository, tmp_path: Path) -> None:
    loud = tmp_path / "loud-restic"
    loud.write_text(
        '#!/bin/sh\necho "Fatal: cannot open with $RESTIC_PASSWORD / $AWS_SECRET_ACCESS_KEY\n'
        'second line" >&2\nhead -c 5000 /dev/zero | tr "\\0" x >&2\nexit 1\n'
    )
    loud.chmod(0o700)
    with pytest.raises(BackupError) as info:
        await Restic(repo, binary=str(loud)).snapshots()
    message = info.value.message
    assert PASSWORD not in message and SECRET_KEY not in message
    assert len(message) <= 300 and "exit 1" in message and "\n" not in message


async def test_a_restic_that_overruns_its_timeout_is_stopped(
    repo: Repository, tmp_path: Path
) -> None:
    slow = tmp_path / "slow-restic"
    slow.write_text("#!/bin/sh\nexec sleep 60\n")
    slow.chmod(0o700)
    with pytest.raises(BackupError, match=r"timed out after 0\.5 s"):
        await Restic(repo, binary=str(slow), quick_timeout=0.5).snapshots()


async def test_a_cancelled_call_stops_restic_before_it_returns(
    repo: Repository, tmp_path: Path
) -> None:
    fifo = tmp_path / "started"
    os.mkfifo(fifo)
    slow = tmp_path / "slow-restic"
    slow.write_text(f"#!/bin/sh\necho $$ > {fifo}\nexec sleep 3600\n")
    slow.chmod(0o700)
    call = asyncio.create_task(Restic(repo, binary=str(slow)).snapshots())
    pid = int(await asyncio.to_thread(fifo.read_text))  # returns once the process runs
    call.cancel()
    async with asyncio.timeout(30):  # an uninterrupted restic would hold it for an hour
        with pytest.raises(asyncio.CancelledError):
            await call
    with pytest.raises(ProcessLookupError):  # exited and reaped, not left running
        os.kill(pid, 0)


@pytest.mark.parametrize(
    ("policy", "flags"),
    [
        (
            RetentionPolicy(24, 7, 4),
            ["--keep-hourly", "24", "--keep-daily", "7", "--keep-weekly", "4"],
        ),
        (RetentionPolicy(0, 7, 0), ["--keep-daily", "7"]),
        (RetentionPolicy(1, 0, 0), ["--keep-hourly", "1"]),
        (RetentionPolicy(0, 0, 0), None),  # would keep nothing: refused, never "forget all"
        (RetentionPolicy(-1, 5, 0), None),
    ],
)
def test_retention_flags(policy: RetentionPolicy, flags: list[str] | None) -> None:
    if flags is None:
        with pytest.raises(BackupError):
            policy.flags()
    else:
        assert policy.flags() == flags


@pytest.mark.parametrize(
    "url",
    ["s3:http://key:secret@127.0.0.1:9000/b/p", "/srv/restic", "sftp:host:/x", "rest:http://x/"],
)
def test_repository_url_is_s3_without_credentials(url: str) -> None:
    with pytest.raises(BackupError):
        Repository(url=url, password="p", access_key="a", secret_key="s")


def test_secrets_never_show_in_repr() -> None:
    repo = Repository(url="s3:http://h/b/p", password="pw-x", access_key="ak-x", secret_key="sk-x")
    assert "pw-x" not in repr(repo) and "ak-x" not in repr(repo) and "sk-x" not in repr(repo)
    assert "pw-x" not in " ".join(Restic(repo).argv("snapshots"))


@pytest.mark.parametrize("tags", [("a,b",), ("",), ("x" * 65,), ("sp ace",)])
async def test_bad_tags_are_refused_before_restic_runs(
    tags: tuple[str, ...], tmp_path: Path
) -> None:
    repo = Repository(url="s3:http://127.0.0.1:1/b/p", password="p", access_key="a", secret_key="s")
    with pytest.raises(BackupError, match="tags must match"):
        await Restic(repo, binary="/nonexistent").snapshot(tmp_path, tags)
