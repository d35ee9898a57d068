"""The worker's backup jobs: snapshots and restores the control plane asks for in its
assignments (`Assignments.backups`, docs/backups.md), run with restic (agent/backups.py).

Contract:
- `update(jobs)` takes the complete list of jobs from an assignments reply: a job not
  seen before starts at once (state `running`), a job already known is left as it is
  (never run twice), and a known job missing from the list is forgotten: cancelled if it
  still runs (restic is interrupted and leaves the repository and the volume as they
  were), and no longer reported.
- Jobs run one per user at a time, at most `at_once` (2) at once on the worker: restic
  is CPU- and IO-heavy and the tenants come first. A job waiting for its turn reports
  `running` too.
- A job works on `<mounts>/<volume_id>` and only once a file system is mounted there
  (/proc/self/mountinfo): a snapshot of an empty mount point would be a snapshot of
  nothing, and its retention would then forget real ones. A job whose volume is not
  mounted and that describes it (`volume`, with the job's `volume_id`) has it mounted
  through `mount` first (the reconciler's, which never formats a device that holds
  anything); `volume_ids()` names the volumes of the known jobs, which the reconciler
  keeps mounted. A snapshot creates the
  repository if missing, backs the volume up with the job's tags and, when any keep_*
  count is above 0, forgets and prunes by those counts and reports the short ids of
  the snapshots the repository kept (`kept`; none when more than MAX_KEPT); a failed
  prune after a successful snapshot is still `done` (the snapshot exists; the next one
  prunes again), with the prune's error and no `kept`. A restore needs a snapshot id and runs only while no
  container of the user exists on this engine (checked right before restic runs); it
  replaces the volume's contents, or leaves them as they were on failure.
- `reports()` is one BackupReport per known job, for the heartbeat. A failed job's
  `error` is one escaped line of at most MAX_BACKUP_ERROR characters, scrubbed of the
  job's password and keys. Jobs (and so their secrets) live in memory only: nothing
  here writes them to disk or logs a secret.
- `close()` cancels every job and returns once each has stopped (the daemon's stop).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.backups import Repository, Restic, RetentionPolicy
from agent.docker_objects import DockerError
from agent.errors import AgentError
from agent.mountinfo import mounted_at, parse_mountinfo
from agent.runtime import DockerRuntime
from agent.volume_commands import VolumeError
from shared.logsafe import escape
from shared.protocol import MAX_BACKUP_ERROR, MAX_KEPT, BackupJob, BackupReport, BlockVolumeSpec

log = logging.getLogger(__name__)

AT_ONCE = 2
SHORT_ID = 8  # restic's short snapshot id: what `restic snapshots` shows
Mount = Callable[[BlockVolumeSpec], Awaitable[object]]


class JobRefused(AgentError):
    """A job this worker will not run as things are (volume not mounted, container up)."""

    code = "backup_job_refused"


def is_mounted(target: Path) -> bool:
    """True when a file system is mounted exactly at `target`."""
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return False
    return mounted_at(parse_mountinfo(text), target) is not None


def error_line(text: str, secrets: Collection[str]) -> str:
    """`text` as a report's error: no secret, one escaped line, at most MAX_BACKUP_ERROR."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    line = escape(" ".join(text.split()))
    return line if len(line) <= MAX_BACKUP_ERROR else line[: MAX_BACKUP_ERROR - 1] + "…"


def kept_ids(kept: Sequence[str]) -> list[str]:
    """The report's `kept`: restic's short ids, sorted; none rather than a partial list
    (the control plane reads a missing snapshot as forgotten)."""
    short = sorted({snapshot_id[:SHORT_ID] for snapshot_id in kept})
    return short if len(short) <= MAX_KEPT else []


@dataclass
class _Job:
    job: BackupJob
    report: BackupReport
    task: asyncio.Task[None] | None = None


class BackupJobs:
    def __init__(
        self,
        mounts: Path,
        runtime: DockerRuntime,
        *,
        binary: str = "restic",
        cache_dir: Path | None = None,
        at_once: int = AT_ONCE,
        clock: Callable[[], float] = time.time,
        mounted: Callable[[Path], bool] = is_mounted,
        mount: Mount | None = None,
    ) -> None:
        self.mounts = mounts
        self.runtime = runtime
        self._binary = binary
        self._cache = cache_dir
        self._clock = clock
        self._mounted = mounted
        self._mount = mount
        self._slots = asyncio.Semaphore(at_once)
        self._users: dict[str, asyncio.Lock] = {}
        self._jobs: dict[str, _Job] = {}
        self._stopping: set[asyncio.Task[None]] = set()  # cancelled, not yet stopped

    def update(self, jobs: Sequence[BackupJob]) -> None:
        wanted = {job.id: job for job in jobs}
        for job_id in self._jobs.keys() - wanted.keys():
            self._forget(job_id)
        for job_id, job in wanted.items():
            if job_id not in self._jobs:
                self._start(job)

    def volume_ids(self) -> set[str]:
        """The volumes the known jobs work on: kept mounted while a job is known."""
        return {entry.job.volume_id for entry in self._jobs.values()}

    def reports(self) -> list[BackupReport]:
        return [entry.report for entry in self._jobs.values()]

    async def finished(self, job_id: str) -> BackupReport:
        """The job's report once it has stopped running (it must be known)."""
        entry = self._jobs[job_id]
        if entry.task is not None:
            await asyncio.shield(entry.task)
        return entry.report

    async def close(self) -> None:
        for job_id in list(self._jobs):
            self._forget(job_id)
        await asyncio.gather(*self._stopping, return_exceptions=True)

    def _start(self, job: BackupJob) -> None:
        entry = _Job(job, BackupReport(id=job.id, state="running"))
        self._jobs[job.id] = entry
        log.info("backup job %s: %s of user %s queued", job.id, job.kind, job.user_id)
        entry.task = asyncio.create_task(self._run(entry), name=f"backup-{job.id}")

    def _forget(self, job_id: str) -> None:
        entry = self._jobs.pop(job_id)
        task = entry.task
        if task is not None and not task.done():
            log.info("backup job %s: gone from the assignments, cancelled", job_id)
            task.cancel()
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
        user = entry.job.user_id
        if all(e.job.user_id != user for e in self._jobs.values()):
            lock = self._users.get(user)
            if lock is not None and not lock.locked():
                del self._users[user]

    async def _run(self, entry: _Job) -> None:
        job = entry.job
        lock = self._users.setdefault(job.user_id, asyncio.Lock())
        async with lock, self._slots:
            try:
                entry.report = await self._execute(job)
            except AgentError as exc:
                entry.report = self._failed(job, exc.message)
            except Exception as exc:
                # Any failure is the job's report. OSError and the like hold no secret,
                # but are scrubbed all the same.
                entry.report = self._failed(job, f"{type(exc).__name__}: {exc}")
        level = logging.INFO if entry.report.state == "done" else logging.WARNING
        log.log(level, "backup job %s: %s %s", job.id, entry.report.state, entry.report.error)

    def _failed(self, job: BackupJob, message: str) -> BackupReport:
        error = error_line(message, (job.password, job.access_key, job.secret_key))
        return BackupReport(id=job.id, state="failed", finished_at=self._clock(), error=error)

    async def _execute(self, job: BackupJob) -> BackupReport:
        target = self.mounts / job.volume_id
        mounted = await asyncio.to_thread(self._mounted, target)
        if not mounted and await self._mount_for(job):
            mounted = await asyncio.to_thread(self._mounted, target)  # as the mount left it
        if not mounted:
            raise JobRefused(f"volume {job.volume_id} is not mounted on this worker")
        repo = Repository(job.repository, job.password, job.access_key, job.secret_key)
        restic = Restic(repo, binary=self._binary, cache_dir=self._cache)
        if job.kind == "restore":
            await self._restore(job, restic, target)
            return BackupReport(id=job.id, state="done", finished_at=self._clock())
        return await self._snapshot(job, restic, target)

    async def _mount_for(self, job: BackupJob) -> bool:
        """Mounts the volume the job describes (no spec names it: a restore after a
        restart); False for a job that does not describe it, or describes another."""
        if self._mount is None or job.volume is None or job.volume.id != job.volume_id:
            return False
        try:
            await self._mount(job.volume)
        except VolumeError as exc:
            raise JobRefused(
                f"volume {job.volume_id} could not be mounted: {exc.message}"
            ) from None
        log.info("backup job %s: mounted volume %s for it", job.id, job.volume_id)
        return True

    async def _snapshot(self, job: BackupJob, restic: Restic, target: Path) -> BackupReport:
        await restic.init_if_missing()
        summary = await restic.snapshot(target, tuple(job.tags))
        error, kept = "", []
        if job.keep_hourly or job.keep_daily or job.keep_weekly:
            policy = RetentionPolicy(job.keep_hourly, job.keep_daily, job.keep_weekly)
            try:
                pruned = await restic.forget_prune(policy)
                kept = kept_ids(pruned.kept)
            except AgentError as exc:
                secrets = (job.password, job.access_key, job.secret_key)
                error = error_line(f"snapshot made; retention failed: {exc.message}", secrets)
        return BackupReport(
            id=job.id,
            state="done",
            snapshot_id=summary.snapshot_id,
            bytes_added=summary.data_added,
            finished_at=self._clock(),
            error=error,
            kept=kept,
        )

    async def _restore(self, job: BackupJob, restic: Restic, target: Path) -> None:
        if not job.snapshot_id:
            raise JobRefused("a restore needs a snapshot_id")
        try:
            found = [c.name for c in await self.runtime.list_managed() if c.user_id == job.user_id]
        except DockerError as exc:
            raise JobRefused(
                f"cannot tell whether the user's container exists: {exc.message}"
            ) from None
        if found:
            raise JobRefused(
                f"restore refused: container {found[0]} of user {job.user_id} exists on this"
                " worker (it must be removed first)"
            )
        await restic.restore(job.snapshot_id, target, replace=True)
