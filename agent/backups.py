"""Encrypted, deduplicated backups of a tenant's state: a thin wrapper over the restic CLI.

One restic repository per user, on S3-compatible storage (docs/backups.md). The control
plane derives the repository's URL and password (control/backups/, control/keyring.py)
and hands them to the worker; this module only runs restic with them.

Contract:
- Secrets (the repository password, the S3 access and secret keys) reach the restic
  process ONLY through its environment (RESTIC_PASSWORD, AWS_ACCESS_KEY_ID,
  AWS_SECRET_ACCESS_KEY), never its argv; the environment is built from a short allow-list
  of the agent's own variables plus those, so nothing else of the agent leaks into it.
  Every error message is scrubbed of the three values and escaped (shared/logsafe.py)
  before it is raised or logged, and bounded to `MESSAGE_MAX` characters.
- restic is a blocking subprocess run in a thread (`asyncio.to_thread`), with an explicit
  timeout per call; on timeout it is interrupted (SIGINT: restic removes its lock), then
  killed (agent/restic_process.py). A cancelled call interrupts restic too and returns only
  once it has exited. Calls on one `Restic` run one at a time (restic's exclusive prune
  lock would refuse an overlapping one). Its stdout and stderr go to unlinked temporary
  files, so memory stays bounded whatever it prints; more than `OUTPUT_MAX` bytes of output
  is an error. JSON output is decoded with msgspec into bounded structs
  (agent/restic_output.py).
- `init_if_missing()` is idempotent (True when it created the repository); a wrong
  password is `WrongPassword`, never an init.
- `snapshot(path, tags)` backs up the directory's contents (run from inside it, so a
  snapshot restores as the directory's contents, wherever it was mounted), excluding
  this module's own staging directories, under a fixed host name so that retention and
  restic's parent detection follow a user across servers.
- `forget_prune(policy)` applies hourly/daily/weekly counts across the whole repository
  (no grouping by host or path) and prunes unreferenced data.
- `restore(snapshot_id, target, replace=False)` refuses a non-empty target unless
  `replace`; it restores into a staging directory inside `target` first and only after
  restic succeeded moves the old contents aside, moves the restored ones in, and deletes
  the old ones. A failed restore leaves `target` as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from agent.backup_errors import BackupError, RepositoryMissing, RestoreRefused, WrongPassword
from agent.restic_output import (
    FORGET,
    SNAPSHOTS,
    Pruned,
    Snapshot,
    Summary,
    first_json,
    read_summary,
)
from agent.restic_process import Process, Result, head, tail, wait
from shared.logsafe import escape

log = logging.getLogger(__name__)

MESSAGE_MAX = 300
OUTPUT_MAX = 8 * 1024 * 1024
HOST = "clawfleet"
STAGING_PREFIX = ".clawfleet-restore-"
REPLACED_PREFIX = ".clawfleet-replaced-"
_TAG = re.compile(r"[A-Za-z0-9_.:=-]{1,64}")  # restic splits tags on commas
_SNAPSHOT_ID = re.compile(r"[0-9a-f]{8,64}")
_KEPT_ENV = ("PATH", "HOME", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR")


@dataclass(frozen=True)
class Repository:
    """Where a user's repository is and what opens it; secrets never show in repr."""

    url: str  # restic's form: s3:https://host/bucket/prefix
    password: str = field(repr=False)
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.url.startswith("s3:http") or "@" in self.url:
            # Credentials belong in the environment, never in a URL that lands in argv.
            raise BackupError(
                "repository URL must be s3:http(s)://host/bucket/... without credentials"
            )


@dataclass(frozen=True)
class RetentionPolicy:
    """How many hourly, daily and weekly snapshots `forget_prune` keeps."""

    hourly: int
    daily: int
    weekly: int

    def flags(self) -> list[str]:
        if min(self.hourly, self.daily, self.weekly) < 0 or not (
            self.hourly or self.daily or self.weekly
        ):
            raise BackupError("a retention policy keeps at least one snapshot, no negatives")
        counts = {"--keep-hourly": self.hourly, "--keep-daily": self.daily}
        counts["--keep-weekly"] = self.weekly
        return [part for flag, n in counts.items() if n for part in (flag, str(n))]


class Restic:
    """One user's repository, driven through the restic binary."""

    def __init__(
        self,
        repo: Repository,
        *,
        binary: str = "restic",
        cache_dir: Path | None = None,
        timeout: float = 3600.0,
        quick_timeout: float = 120.0,
    ) -> None:
        self._repo = repo
        self._binary = binary
        self._cache = cache_dir
        self._timeout = timeout  # backup, restore, prune: they move data
        self._quick = quick_timeout  # init, listing: they read a few small objects
        # One restic at a time per repository: prune's exclusive lock would refuse the rest.
        self._lock = asyncio.Lock()

    def argv(self, *args: str) -> list[str]:
        """The full command line of one restic call: never a secret (tests read it)."""
        cache = ["--cache-dir", str(self._cache)] if self._cache else ["--no-cache"]
        return [self._binary, "--repo", self._repo.url, *cache, *args]

    def env(self) -> dict[str, str]:
        kept = {k: os.environ[k] for k in _KEPT_ENV if k in os.environ}
        return {
            **kept,
            "TZ": "UTC",  # --time is read in local time: make that UTC
            "RESTIC_PASSWORD": self._repo.password,
            "AWS_ACCESS_KEY_ID": self._repo.access_key,
            "AWS_SECRET_ACCESS_KEY": self._repo.secret_key,
        }

    async def init_if_missing(self) -> bool:
        """Create the repository unless it exists; True when this call created it."""
        try:
            await self._ok(("cat", "config"), self._quick)
            return False
        except RepositoryMissing:
            pass
        result = await self._call(("init",), self._quick)
        if result.returncode == 0:
            log.info("backup repository created at %s", escape(self._repo.url))
            return True
        if "already initialized" in result.stderr:
            return False  # another caller won the race: same outcome
        raise self._error("restic init", result)

    async def snapshot(
        self, path: Path, tags: tuple[str, ...] = (), *, at: datetime | None = None
    ) -> Summary:
        """Back up the contents of the directory `path`; restic's summary of the snapshot.

        `at` overrides the snapshot's time (UTC), for imports and retention tests."""
        bad = [t for t in tags if not _TAG.fullmatch(t)]
        if bad or len(tags) > 32:
            raise BackupError(f"tags must match {_TAG.pattern} (at most 32): {bad!r:.100}")
        if not await asyncio.to_thread(path.is_dir):
            raise BackupError(f"nothing to back up: {escape(str(path))} is not a directory")
        args = ["backup", ".", "--json", "--quiet", "--host", HOST]
        args += ["--exclude", STAGING_PREFIX + "*", "--exclude", REPLACED_PREFIX + "*"]
        args += [part for tag in tags for part in ("--tag", tag)]
        if at is not None:
            args += ["--time", at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")]
        out = await self._ok(args, self._timeout, cwd=path)
        summary = read_summary(out)
        log.info(
            "snapshot %s of %s: %d bytes added",
            summary.snapshot_id,
            escape(str(path)),
            summary.data_added,
        )
        return summary

    async def snapshots(self) -> list[Snapshot]:
        """Every snapshot in the repository, oldest first."""
        out = await self._ok(("snapshots", "--json"), self._quick)
        try:
            found = SNAPSHOTS.decode(out)
        except msgspec.ValidationError as exc:
            raise BackupError(f"unexpected restic snapshots output: {exc}") from None
        return sorted(found, key=lambda s: s.time)

    async def forget_prune(self, policy: RetentionPolicy) -> Pruned:
        """Forget what `policy` does not keep, across the repository, and prune the data."""
        args = ["forget", "--json", "--group-by", "", *policy.flags(), "--prune"]
        out = await self._ok(args, self._timeout)
        try:
            # prune's own report follows the JSON on stdout in restic 0.14: read the JSON only.
            groups = FORGET.decode(first_json(out))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise BackupError(f"unexpected restic forget output: {exc}") from None
        kept = tuple(s.id for g in groups for s in g.keep or ())
        removed = tuple(s.id for g in groups for s in g.remove or ())
        log.info("retention kept %d snapshots, removed %d", len(kept), len(removed))
        return Pruned(kept=kept, removed=removed)

    async def restore(self, snapshot_id: str, target: Path, *, replace: bool = False) -> None:
        """Make `target`'s contents those of the snapshot (module docstring)."""
        if not _SNAPSHOT_ID.fullmatch(snapshot_id):
            raise BackupError(f"not a snapshot id: {escape(snapshot_id)[:80]!r}")
        existing = await asyncio.to_thread(_contents, target)
        if existing and not replace:
            raise RestoreRefused(f"{escape(str(target))} is not empty; restore with replace")
        staging = target / (STAGING_PREFIX + secrets.token_hex(4))
        try:
            await self._ok(("restore", snapshot_id, "--target", str(staging)), self._timeout)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        await asyncio.to_thread(_swap_in, target, staging, existing)
        log.info("restored snapshot %s into %s", snapshot_id, escape(str(target)))

    async def _ok(
        self, args: tuple[str, ...] | list[str], seconds: float, cwd: Path | None = None
    ) -> bytes:
        result = await self._call(tuple(args), seconds, cwd)
        if result.returncode != 0:
            raise self._error(f"restic {args[0]}", result)
        return result.stdout

    async def _call(self, args: tuple[str, ...], seconds: float, cwd: Path | None = None) -> Result:
        async with self._lock:
            process = Process()
            run = asyncio.ensure_future(asyncio.to_thread(self._run, args, seconds, cwd, process))
            try:
                return await asyncio.shield(run)
            except asyncio.CancelledError:
                # A thread cannot be cancelled: interrupt restic (it releases its lock) and
                # wait for it, so that nothing writes once the caller has moved on.
                process.interrupt()
                with contextlib.suppress(Exception):
                    await run
                raise

    def _run(
        self,
        args: tuple[str, ...],
        timeout: float,
        cwd: Path | None,
        process: Process,
    ) -> Result:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                    self.argv(*args),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=self.env(),
                    cwd=cwd,
                )
            except OSError as exc:
                raise BackupError(f"cannot run {self._binary}: {exc.strerror}") from None
            process.started(proc)
            returncode = wait(proc, timeout)
            stdout, stderr = head(out, OUTPUT_MAX + 1), tail(err, 4096)
        if returncode is None:
            raise BackupError(f"restic {args[0]} timed out after {timeout:g} s")
        if len(stdout) > OUTPUT_MAX:
            raise BackupError(f"restic printed more than {OUTPUT_MAX} bytes")
        return Result(returncode, stdout, stderr.decode(errors="replace"))

    def _error(self, what: str, result: Result) -> BackupError:
        text = self.scrub(result.stderr.strip())
        lines = [line for line in text.splitlines() if line.strip()]
        detail = escape(" / ".join(lines[-3:]))
        message = f"{what} failed (exit {result.returncode}): {detail}"[:MESSAGE_MAX]
        if "wrong password" in text:
            return WrongPassword(f"{what}: wrong repository password (no key opens it)")
        if "Is there a repository at the following location?" in text:
            return RepositoryMissing(message)
        return BackupError(message)

    def scrub(self, text: str) -> str:
        """`text` without any of the repository's secrets (restic could echo one)."""
        for value in (self._repo.password, self._repo.access_key, self._repo.secret_key):
            if value:
                text = text.replace(value, "***")
        return text


def _contents(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return [p for p in directory.iterdir() if not p.name.startswith(STAGING_PREFIX)]


def _swap_in(target: Path, staging: Path, existing: list[Path]) -> None:
    """Move the old contents aside, the restored ones in, then delete the old ones.

    Renames within one directory (one filesystem), so a mount point can be the target.
    Until the last step the old contents still exist, under REPLACED_PREFIX."""
    old = target / (REPLACED_PREFIX + secrets.token_hex(4))
    old.mkdir()
    for entry in existing:
        entry.rename(old / entry.name)
    for entry in staging.iterdir():
        entry.rename(target / entry.name)
    staging.rmdir()
    shutil.rmtree(old)
