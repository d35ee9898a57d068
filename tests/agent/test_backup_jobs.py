"""The agent's backup jobs (agent/backup_jobs.py): driven directly, with the real restic,
a real S3 server (tests/s3server.py), a real loop-mounted ext4 volume and, for the
restore refusal, a real container on the Docker engine. The scheduling rules (two at
once, one per user) through the mount check's seam; the daemon's part (heartbeat, the
first poll, nothing on disk) with a small control plane of its own."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import docker
import msgspec
import pytest
from aiohttp import web

from agent.backup_jobs import BackupJobs, error_line
from agent.backups import Repository, Restic
from agent.config import load_settings
from agent.daemon import Daemon
from agent.mountinfo import parse_mountinfo
from agent.ownership import LABEL_MANAGED, LABEL_USER
from agent.runtime import DockerRuntime
from agent.state import DESIRED, Credentials, StateStore
from agent.volumes import BlockVolumes
from shared.protocol import (
    MAX_BACKUP_ERROR,
    Assignments,
    BackupJob,
    BackupReport,
    BlockVolumeSpec,
    encode,
)
from tests.agent.conftest import GOOD, new_user
from tests.agent.specs import make_spec
from tests.agent.test_block_volumes_docker import (  # noqa: F401 (daemon, state_dir: fixtures)
    containers_of,
    daemon,
    state_dir,
    with_volume,
)
from tests.backup_state import change_one_file, make_state
from tests.fixtures import free_port
from tests.s3server import ACCESS_KEY, S3, SECRET_KEY, s3_server

PASSWORD = "job-password-5b0e7c1d9a2f4e36"  # fixed: test ids show it, and xdist compares them
needs_restic = pytest.mark.skipif(
    shutil.which("restic") is None and os.environ.get("CI") != "true",
    reason="restic is not installed (apt-get install restic; .ci/run does)",
)


def job(job_id: str, user: str = "alice", **fields: Any) -> BackupJob:
    values: dict[str, Any] = {
        "kind": "snapshot",
        "volume_id": f"vol-{user}",
        "repository": "s3:http://127.0.0.1:9/bucket/test/" + user,
        "password": PASSWORD,
        "access_key": ACCESS_KEY,
        "secret_key": SECRET_KEY,
        **fields,
    }
    return BackupJob(id=job_id, user_id=user, **values)


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and "lost+found" not in p.parts
    }


# -- pure parts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (f"restic: password {PASSWORD} refused", "restic: password *** refused"),
        (f"key {ACCESS_KEY}/{SECRET_KEY}", "key ***/***"),
        ("Fatal: unable\n  to open\tconfig", "Fatal: unable to open config"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("x" * 1000, "x" * (MAX_BACKUP_ERROR - 1) + "…"),
    ],
)
def test_an_error_line_is_one_safe_line_without_secrets(text: str, line: str) -> None:
    assert error_line(text, (PASSWORD, ACCESS_KEY, SECRET_KEY, "")) == line


def test_the_desired_set_is_saved_without_its_backup_jobs(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.ensure_dir()
    got = Assignments(
        generation=7,
        containers=[make_spec("alice", GOOD)],
        backups=[job("j1"), job("j2", kind="restore", snapshot_id="ab" * 32)],
    )
    store.save_desired(got)
    saved = (store.dir / DESIRED).read_bytes()
    for secret in (PASSWORD, ACCESS_KEY, SECRET_KEY):
        assert secret.encode() not in saved
    assert store.load_desired() == msgspec.structs.replace(got, backups=[])


# -- scheduling, through the mount check's seam -------------------------------------------


class Gate:
    """The jobs' mount check, run in a worker thread: each call waits until the test
    opens its volume's gate, and says "not mounted" (the job then fails at once)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.entered: list[str] = []
        self.open: set[str] = set()
        self.inside: set[str] = set()
        self.most = 0

    def __call__(self, target: Path) -> bool:
        with self.cond:
            self.entered.append(target.name)
            self.inside.add(target.name)
            self.most = max(self.most, len(self.inside))
            self.cond.notify_all()
            self.cond.wait_for(lambda: target.name in self.open, timeout=30)
            self.inside.discard(target.name)
        return False

    async def entered_count(self, n: int) -> list[str]:
        def wait() -> bool:
            with self.cond:
                return self.cond.wait_for(lambda: len(self.entered) >= n, timeout=30)

        assert await asyncio.to_thread(wait), self.entered
        return list(self.entered)

    def release(self, name: str) -> None:
        with self.cond:
            self.open.add(name)
            self.cond.notify_all()


async def test_two_jobs_at_once_and_one_per_user(tmp_path: Path) -> None:
    gate = Gate()
    jobs = BackupJobs(tmp_path / "mounts", DockerRuntime(None), mounted=gate, clock=lambda: 42.0)
    a1, a2 = job("a1", volume_id="a1"), job("a2", volume_id="a2")
    b1, c1 = job("b1", "bob", volume_id="b1"), job("c1", "carol", volume_id="c1")
    jobs.update([a1, a2, b1, c1])
    assert jobs.reports() == [BackupReport(id=j, state="running") for j in ("a1", "a2", "b1", "c1")]
    assert sorted(await gate.entered_count(2)) == ["a1", "b1"]  # a2 waits for alice's turn
    gate.release("a1")
    assert (await jobs.finished("a1")).state == "failed"
    # c1 was waiting for a slot before a2 got alice's turn.
    assert (await gate.entered_count(3))[2] == "c1"
    for name in ("b1", "c1", "a2"):
        gate.release(name)
    reports = {j: await jobs.finished(j) for j in ("a1", "a2", "b1", "c1")}
    assert gate.entered[3] == "a2" and gate.most == 2
    assert reports["a2"] == BackupReport(
        id="a2", state="failed", finished_at=42.0, error="volume a2 is not mounted on this worker"
    )
    # Known jobs are not run again; a job gone from the assignments is forgotten.
    jobs.update([a1, a2, b1])
    jobs.update([a2])
    assert jobs.reports() == [reports["a2"]] and len(gate.entered) == 4
    await jobs.close()


async def test_a_job_gone_from_the_assignments_is_cancelled_and_close_waits(
    tmp_path: Path,
) -> None:
    gate = Gate()
    jobs = BackupJobs(tmp_path / "mounts", DockerRuntime(None), mounted=gate)
    jobs.update([job("a1", volume_id="a1"), job("b1", "bob", volume_id="b1")])
    await gate.entered_count(2)
    jobs.update([job("b1", "bob", volume_id="b1")])
    assert [r.id for r in jobs.reports()] == ["b1"]
    jobs.update([job("a1", volume_id="a9")])  # alice's next job: her slot is free again
    await gate.entered_count(3)
    for name in ("a1", "b1", "a9"):
        gate.release(name)
    await jobs.close()
    assert jobs.reports() == []


# -- for real: restic, S3, a loop-mounted volume, Docker ------------------------------------


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with s3_server() as server:
        yield server


def _mounts_under(root: Path) -> list[str]:
    entries = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    return [e.target for e in entries if e.target.startswith(str(root))]


@pytest.fixture
async def volume(tmp_path: Path) -> AsyncIterator[Path]:
    """`<STATE_DIR>/mounts/<id>` with a fresh ext4 loop volume mounted on it; every mount
    and loop device is undone afterwards, pass or fail."""
    volumes = BlockVolumes(tmp_path / "state" / "mounts", tmp_path / "loops")
    try:
        yield await volumes.ensure(BlockVolumeSpec(id="vol-1", device="loop:vol1", size_gb=1))
    finally:
        for target in reversed(_mounts_under(tmp_path)):
            subprocess.run(["umount", "-l", target], check=False)
        out = subprocess.run(
            ["losetup", "-n", "-O", "NAME,BACK-FILE", "--list"], capture_output=True, text=True
        ).stdout
        for line in out.splitlines():
            if str(tmp_path / "loops") in line:
                subprocess.run(["losetup", "-d", line.split()[0]], check=False)


def real_job(s3: S3, job_id: str, user: str, **fields: Any) -> BackupJob:
    repository = s3.repo_url("clawfleet-backups", f"jobs/{uuid.uuid4().hex}")
    return job(job_id, user, volume_id="vol-1", repository=repository, **fields)


def nothing_on_disk(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file() and "loops" not in path.relative_to(root).parts:
            data = path.read_bytes()
            assert PASSWORD.encode() not in data and SECRET_KEY.encode() not in data, path


@pytest.mark.docker
@needs_restic
@pytest.mark.blockdev
async def test_snapshots_and_a_restore_of_the_first_one(
    s3: S3, volume: Path, tmp_path: Path, users: list[str]
) -> None:
    user = new_user()
    users.append(user)
    runtime = DockerRuntime(None)
    jobs = BackupJobs(volume.parent, runtime, clock=lambda: 1_796_000_000.0)
    make_state(volume / "state", 2 * 1024 * 1024)
    before = tree(volume)
    first_job = real_job(s3, "snap-1", user, tags=["scheduled"])
    jobs.update([first_job])
    first = await jobs.finished("snap-1")
    assert (first.state, first.error, first.finished_at) == ("done", "", 1_796_000_000.0)
    # restic 0.14 names the snapshot by its short id (8 hex digits); restore takes it.
    assert len(first.snapshot_id) >= 8 and first.bytes_added > 1024 * 1024

    change_one_file(volume / "state")
    second_job = msgspec.structs.replace(first_job, id="snap-2")
    jobs.update([first_job, second_job])
    second = await jobs.finished("snap-2")
    assert second.state == "done" and second.snapshot_id != first.snapshot_id
    assert second.bytes_added * 10 < first.bytes_added

    restore = msgspec.structs.replace(
        first_job, id="restore-1", kind="restore", snapshot_id=first.snapshot_id
    )
    jobs.update([restore])
    assert [r.id for r in jobs.reports()] == ["restore-1"]  # the snapshots are forgotten
    done = await jobs.finished("restore-1")
    assert (done.state, done.error) == ("done", "")
    assert tree(volume) == before
    nothing_on_disk(tmp_path)
    await jobs.close()
    runtime.close()


@pytest.mark.docker
@needs_restic
@pytest.mark.blockdev
async def test_a_restore_is_refused_while_a_container_of_the_user_exists(
    s3: S3,
    volume: Path,
    dclient: docker.DockerClient,
    test_images: dict[str, str],
    users: list[str],
) -> None:
    user = new_user()
    users.append(user)
    runtime = DockerRuntime(None)
    jobs = BackupJobs(volume.parent, runtime)
    (volume / "memory.md").write_text("first")
    snap = real_job(s3, "snap-1", user)
    jobs.update([snap])
    first = await jobs.finished("snap-1")
    assert first.state == "done", first
    (volume / "memory.md").write_text("newer")
    labels = {LABEL_MANAGED: "true", LABEL_USER: user}
    dclient.containers.create(GOOD, name=f"clawfleet-{user}", labels=labels)

    restore = msgspec.structs.replace(
        snap, id="restore-1", kind="restore", snapshot_id=first.snapshot_id
    )
    jobs.update([restore])
    refused = await jobs.finished("restore-1")
    assert refused.state == "failed"
    assert refused.error == (
        f"restore refused: container clawfleet-{user} of user {user} exists on this worker"
        " (it must be removed first)"
    )
    assert (volume / "memory.md").read_text() == "newer"
    await jobs.close()
    runtime.close()


@needs_restic
@pytest.mark.blockdev
async def test_a_wrong_password_fails_without_showing_it(
    s3: S3, volume: Path, tmp_path: Path
) -> None:
    jobs = BackupJobs(volume.parent, DockerRuntime(None))
    (volume / "memory.md").write_text("kept")
    right = real_job(s3, "snap-1", "alice")
    jobs.update([right])
    assert (await jobs.finished("snap-1")).state == "done"
    wrong_password = "wrong-" + PASSWORD
    wrong = msgspec.structs.replace(right, id="snap-2", password=wrong_password)
    jobs.update([wrong])
    failed = await jobs.finished("snap-2")
    assert failed.state == "failed"
    assert "wrong repository password" in failed.error
    assert wrong_password not in failed.error and PASSWORD not in failed.error
    assert len(await Restic(repo_of(right)).snapshots()) == 1
    nothing_on_disk(tmp_path)
    await jobs.close()


@needs_restic
@pytest.mark.blockdev
async def test_a_snapshot_applies_the_jobs_retention(s3: S3, volume: Path) -> None:
    jobs = BackupJobs(volume.parent, DockerRuntime(None))
    (volume / "memory.md").write_text("one")
    snap = real_job(s3, "snap-1", "alice", keep_hourly=1)
    jobs.update([snap])
    assert (await jobs.finished("snap-1")).state == "done"
    (volume / "memory.md").write_text("two")
    jobs.update([msgspec.structs.replace(snap, id="snap-2")])
    second = await jobs.finished("snap-2")
    assert (second.state, second.error) == ("done", "")
    # One per hour: both were made within the hour, so only the newer one is kept.
    kept = [s.id for s in await Restic(repo_of(snap)).snapshots()]
    assert len(kept) == 1 and kept[0].startswith(second.snapshot_id)
    await jobs.close()


@needs_restic
async def test_a_volume_that_is_not_mounted_is_never_backed_up(s3: S3, tmp_path: Path) -> None:
    """An empty mount point backed up would be a snapshot of nothing, and its retention
    could forget the real ones."""
    mounts = tmp_path / "state" / "mounts"
    (mounts / "vol-1").mkdir(parents=True)
    jobs = BackupJobs(mounts, DockerRuntime(None))
    snap = real_job(s3, "snap-1", "alice", keep_hourly=1)
    jobs.update([snap])
    failed = await jobs.finished("snap-1")
    assert (failed.state, failed.error) == ("failed", "volume vol-1 is not mounted on this worker")
    await jobs.close()


def repo_of(j: BackupJob) -> Repository:
    return Repository(j.repository, j.password, j.access_key, j.secret_key)


# -- the daemon's wiring ------------------------------------------------------------------


class Plane:
    """Answers the assignments long-poll with `current`, recording each `after`."""

    def __init__(self, current: Assignments) -> None:
        self.current = current
        self.afters: list[int] = []
        self.asked = asyncio.Event()

    async def assignments(self, request: web.Request) -> web.Response:
        self.afters.append(int(request.query["after"]))
        self.asked.set()
        if self.current.generation <= self.afters[-1]:
            await asyncio.Event().wait()  # a long-poll with nothing newer: never answers
        return web.Response(body=encode(self.current), content_type="application/json")


@pytest.fixture
async def plane() -> AsyncIterator[tuple[Plane, str]]:
    made = Plane(Assignments(generation=5, containers=[], backups=[job("j1")]))
    app = web.Application()
    app.router.add_get("/v1/agent/assignments", made.assignments)
    # The long-poll handler never answers by itself: cancelled when its client goes, and
    # at cleanup, or cleanup waits for it forever.
    runner = web.AppRunner(app, shutdown_timeout=0, handler_cancellation=True)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield made, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def polled_daemon(url: str, state: Path, plane: Plane, polls: int) -> Daemon:
    """A daemon polling `plane` until it asked `polls` times, with no Docker engine."""
    settings = load_settings(
        {"CONTROL_URL": url, "STATE_DIR": str(state), "DOCKER_HOST": "unix:///nonexistent"}
    )
    made = Daemon(settings)
    made.store.ensure_dir()
    made.reconciler.desired = made.store.load_desired()
    made.creds = Credentials("srv-test1234", "s" * 43)  # no owner: passes do nothing
    made._registered.set()
    poll = asyncio.create_task(made._poll_loop())
    async with asyncio.timeout(30):  # an agent that never asks again fails, not hangs
        while len(plane.afters) < polls:
            plane.asked.clear()
            await plane.asked.wait()
    poll.cancel()
    await asyncio.gather(poll, return_exceptions=True)
    return made


async def test_jobs_reach_the_heartbeat_never_the_disk_and_come_back_after_a_restart(
    plane: tuple[Plane, str], tmp_path: Path
) -> None:
    control, url = plane
    state = tmp_path / "state"
    agent = await polled_daemon(url, state, control, polls=2)
    assert control.afters == [0, 5]
    beat = await agent._build_heartbeat()
    assert [r.id for r in beat.backups] == ["j1"]
    report = await agent.backups.finished("j1")
    assert report.error == "volume vol-alice is not mounted on this worker"
    assert (await agent._build_heartbeat()).backups == [report]
    nothing_on_disk(state)
    assert agent.store.load_desired() == msgspec.structs.replace(control.current, backups=[])
    await agent.backups.close()
    await agent.client.close()

    # Restarted: the saved set is generation 5, and the first poll still gets the job.
    again = await polled_daemon(url, state, control, polls=4)
    assert control.afters == [0, 5, 0, 5]
    assert [r.id for r in again.backups.reports()] == ["j1"]
    await again.backups.close()
    await again.client.close()


# -- the reconciler keeps a job's volume --------------------------------------------------


@pytest.mark.docker
@pytest.mark.blockdev
async def test_a_volume_a_job_names_stays_mounted_after_its_spec_is_withheld(
    daemon: Daemon,  # noqa: F811 (the imported fixture)
    state_dir: Path,  # noqa: F811 (the imported fixture)
    dclient: docker.DockerClient,
    users: list[str],
) -> None:
    """A restore arrives with its user's spec withheld: the container goes, the volume
    must stay for the job, and goes once the job has left the assignments."""
    user = new_user()
    users.append(user)
    volume = BlockVolumeSpec(id=f"vol-{user}", device=f"loop:{user}", size_gb=1)
    spec = with_volume(make_spec(user, GOOD), volume)
    restore = job("r1", user, kind="restore", volume_id=volume.id, snapshot_id="ab" * 4)
    rec = daemon.reconciler
    await rec.reconcile(Assignments(generation=1, containers=[spec]))
    assert containers_of(dclient, user)

    await rec.reconcile(Assignments(generation=2, containers=[], backups=[restore]))
    assert not containers_of(dclient, user)
    assert volumes_mounted(state_dir) == [str(state_dir / "mounts" / volume.id)]

    await rec.reconcile(Assignments(generation=3, containers=[]))
    assert volumes_mounted(state_dir) == []


def volumes_mounted(root: Path) -> list[str]:
    return [m for m in _mounts_under(root) if Path(m).parent == root / "mounts"]
