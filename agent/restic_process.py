"""One restic process, run from a worker thread (agent/backups.py).

Contract: `wait` returns the exit status, or None once a process that overran its
timeout was interrupted with SIGINT (restic removes its repository lock) and, after a
grace period, killed. `Process` interrupts its call's process from the event loop's
thread, even before the worker thread has started it (then it is interrupted as it
starts). `head` and `tail` read at most `limit` bytes of a process's output file, so
memory stays bounded whatever it printed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from dataclasses import dataclass
from typing import IO

_INTERRUPT_GRACE = 10.0


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: bytes
    stderr: str


class Process:
    """The restic process of one call, interruptible from the event loop's thread even
    before the worker thread has started it (then it is interrupted as it starts)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._interrupted = False

    def started(self, proc: subprocess.Popen[bytes]) -> None:
        with self._guard:
            self._proc = proc
            if self._interrupted:
                proc.send_signal(signal.SIGINT)

    def interrupt(self) -> None:
        with self._guard:
            self._interrupted = True
            if self._proc is not None:
                self._proc.send_signal(signal.SIGINT)


def wait(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The exit status, or None after interrupting (then killing) a process that overran."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # restic removes its repository lock on SIGINT
        try:
            proc.wait(timeout=_INTERRUPT_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return None


def head(file: IO[bytes], limit: int) -> bytes:
    file.seek(0)
    return file.read(limit)


def tail(file: IO[bytes], limit: int) -> bytes:
    # The end of stderr holds restic's fatal line; earlier lines are per-file warnings.
    size = file.seek(0, os.SEEK_END)
    file.seek(max(0, size - limit))
    return file.read(limit)
