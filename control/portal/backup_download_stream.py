"""One snapshot of a user's restic repository, streamed to a customer as a tar archive
by the control plane's own restic (docs/portal.md, "Downloading a backup").

Contract:
- `refusal(active, who, cap)` is the pure admission decision: a customer with a
  download running gets `"yours"`, anyone once `cap` run at once gets `"busy"`, else
  None. `Downloads.slot(who)` applies it (429 `rate_limited` with Retry-After,
  before restic runs) and holds the slot until the download ends however it ends.
- `argv(binary, url, snapshot_id)` is restic's command line:
  `dump <snapshot> / --archive tar`, without a local cache; never a secret. `/`: the
  worker backs up a volume's contents from inside it (agent/backups.py `backup .`),
  so a snapshot holds them at its root, whatever `restic snapshots` says its path was.
- `env(password, access_key, secret_key)`: the repository password and the bucket's
  keys reach restic only through its environment (RESTIC_PASSWORD, AWS_ACCESS_KEY_ID,
  AWS_SECRET_ACCESS_KEY), built from a short allow-list of the control plane's own
  variables, as on the workers (docs/backups.md, "Keys").
- `stream(request, download, limits)` runs restic and copies its stdout to a
  `web.StreamResponse` (`Content-Disposition: attachment`) a chunk at a time: the
  client's pace throttles restic through the pipe, nothing holds the archive. The
  headers go out only with restic's first bytes, so a restic that fails before any is
  a proper 503 `backup_download_failed`. A failure after them (restic's exit status,
  the `timeout`) closes the connection without the end of the chunked body, so the
  client sees an incomplete download, never a complete-looking truncated one. Whenever
  the download ends early (the client went away, the timeout, a shutdown), restic is
  interrupted (SIGINT: it removes its repository lock) and, after `GRACE` seconds,
  killed, and awaited. restic's stderr is kept to its last 4 KiB and logged scrubbed
  of the three secrets and escaped; the customer sees none of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

from control.api.ratelimit import RateLimited
from control.errors import ServiceUnavailable
from shared.logsafe import escape

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
STDERR_TAIL = 4096
GRACE = 10.0
_KEPT_ENV = ("PATH", "HOME", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR")
Refusal = Literal["yours", "busy"]


class DownloadFailed(ServiceUnavailable):
    code = "backup_download_failed"


def refusal(active: Collection[str], who: str, cap: int) -> Refusal | None:
    if who in active:
        return "yours"
    if len(active) >= cap:
        return "busy"
    return None


_WORDS: dict[Refusal, str] = {
    "yours": "a download of yours is still running: one at a time",
    "busy": "too many backup downloads at once: try again in a minute",
}


@dataclass
class Downloads:
    """The downloads running now, by customer; tests shorten `timeout` and `cap`."""

    cap: int = 3
    timeout: float = 3600.0
    retry_after: int = 60
    binary: str = "restic"
    active: set[str] = field(default_factory=set)
    _ended: asyncio.Condition | None = None

    @contextlib.asynccontextmanager
    async def slot(self, who: str) -> AsyncIterator[None]:
        reason = refusal(self.active, who, self.cap)
        if reason is not None:
            raise RateLimited(_WORDS[reason], retry_after=self.retry_after)
        self.active.add(who)
        try:
            yield
        finally:
            self.active.discard(who)
            async with self._condition():
                self._condition().notify_all()

    async def wait_idle(self) -> None:
        """Returns once no download runs (tests await the end of one they cut off)."""
        async with self._condition():
            await self._condition().wait_for(lambda: not self.active)

    def _condition(self) -> asyncio.Condition:
        if self._ended is None:
            self._ended = asyncio.Condition()
        return self._ended


@dataclass(frozen=True)
class Download:
    """What one download needs: where, which snapshot, its secrets, its file name."""

    url: str
    snapshot_id: str
    filename: str
    password: str = field(repr=False)
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)

    def scrub(self, text: str) -> str:
        for value in (self.password, self.access_key, self.secret_key):
            if value:
                text = text.replace(value, "***")
        return escape(text)


def argv(binary: str, url: str, snapshot_id: str) -> list[str]:
    return [binary, "--repo", url, "--no-cache", "dump", snapshot_id, "/", "--archive", "tar"]


def env(password: str, access_key: str, secret_key: str) -> dict[str, str]:
    kept = {k: os.environ[k] for k in _KEPT_ENV if k in os.environ}
    return {
        **kept,
        "RESTIC_PASSWORD": password,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
    }


async def stream(request: web.Request, download: Download, limits: Downloads) -> web.StreamResponse:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv(limits.binary, download.url, download.snapshot_id),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env(download.password, download.access_key, download.secret_key),
        )
    except OSError as exc:  # restic is not installed (docs/production.md says it must be)
        log.error("cannot run %s for a backup download: %s", escape(limits.binary), exc.strerror)
        raise _public(DownloadFailed("no restic")) from None
    stderr = asyncio.ensure_future(_tail(proc.stderr))
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/x-tar",
            "Content-Disposition": f'attachment; filename="{download.filename}"',
        }
    )
    started = time.monotonic()
    try:
        async with asyncio.timeout(limits.timeout):
            sent = await _copy(request, proc, response)
        await response.write_eof()
    except BaseException as exc:
        await _stop(proc)
        _log_failure(download, exc, await stderr)
        if isinstance(exc, asyncio.CancelledError):
            raise
        if not response.prepared:
            raise _public(exc) from None
        # The headers are out: only an incomplete body can say that it failed.
        if request.transport is not None:
            request.transport.close()
        return response
    finally:
        stderr.cancel()
    seconds = time.monotonic() - started
    log.info("backup download of %s: %d bytes in %.1f s", download.snapshot_id, sent, seconds)
    return response


async def _copy(
    request: web.Request, proc: asyncio.subprocess.Process, response: web.StreamResponse
) -> int:
    """restic's stdout into `response`, prepared only once restic has sent bytes."""
    assert proc.stdout is not None
    chunk = await proc.stdout.read(CHUNK)
    if not chunk:
        raise DownloadFailed(f"restic exited {await proc.wait()} before sending anything")
    await response.prepare(request)
    sent = 0
    while chunk:
        await response.write(chunk)
        sent += len(chunk)
        chunk = await proc.stdout.read(CHUNK)
    code = await proc.wait()
    if code != 0:
        raise DownloadFailed(f"restic exited {code} after {sent} bytes")
    return sent


async def _tail(pipe: asyncio.StreamReader | None) -> bytes:
    """restic's stderr, read as it comes (a full pipe would stall it), its end kept."""
    kept = b""
    while pipe is not None and (block := await pipe.read(CHUNK)):
        kept = (kept + block)[-STDERR_TAIL:]
    return kept


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """Interrupt restic (it removes its lock), kill it after GRACE, and reap it. Its
    stdout is read and dropped meanwhile: restic blocked on a full pipe would not get to
    its exit, and the pipe must reach its end for the process's transport to close."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGINT)
    drained = asyncio.ensure_future(_drain(proc))
    try:
        await asyncio.wait_for(asyncio.shield(drained), GRACE)
    except TimeoutError:
        pass
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await drained


async def _drain(proc: asyncio.subprocess.Process) -> None:
    while proc.stdout is not None and await proc.stdout.read(CHUNK):
        pass
    await proc.wait()


def _public(exc: BaseException) -> BaseException:
    """What the customer is told of a failure before any byte was sent."""
    if isinstance(exc, DownloadFailed | TimeoutError):
        return DownloadFailed("the backup could not be read just now: please try again later")
    return exc


def _log_failure(download: Download, exc: BaseException, stderr: bytes) -> None:
    why = (
        "the client went away"
        if isinstance(exc, asyncio.CancelledError | ConnectionError)
        else ("timed out" if isinstance(exc, TimeoutError) else str(exc))
    )
    words = download.scrub(stderr.decode(errors="replace").strip())[-300:]
    log.warning(
        "backup download of %s ended early: %s; restic: %s",
        download.snapshot_id,
        download.scrub(why),
        words or "-",
    )
