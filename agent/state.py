"""What the agent keeps on disk in STATE_DIR, so a restart changes nothing.

Contract: `credentials.json` holds the worker id and secret, and the ids this agent held
before it re-registered (so it still owns, and replaces, what it made under them);
`desired.json` holds the
last Assignments message received (the desired set the agent keeps enforcing while
the control plane is away), without its backup jobs, whose secrets stay in memory.
Every file is written atomically (temp file in the same
directory, fsync, rename, fsync of the directory) with mode 0600, so a crash leaves
either the old or the new content, never a torn file and never a readable secret.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import TypeVar

import msgspec

from agent.errors import AgentError
from shared.protocol import Assignments, ProtocolError, decode, encode

T = TypeVar("T")

CREDENTIALS = "credentials.json"
DESIRED = "desired.json"


class StateError(AgentError):
    """A state file exists but cannot be read or parsed."""

    code = "state_unreadable"


class Credentials(msgspec.Struct, frozen=True):
    worker_id: str
    secret: str
    # Newest first, bounded (agent/ownership.py MAX_PREVIOUS); absent in older files.
    previous: tuple[str, ...] = ()

    def __repr__(self) -> str:  # keeps the secret out of logs and tracebacks
        return f"Credentials(worker_id={self.worker_id!r})"


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class StateStore:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir

    def ensure_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _read(self, name: str) -> bytes | None:
        path = self.dir / name
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {path}: {exc.strerror}") from None

    def _load(self, name: str, kind: type[T], advice: str = "") -> T | None:
        """The file decoded; None when it does not exist, StateError when it cannot be
        read or is corrupt."""
        raw = self._read(name)
        if raw is None:
            return None
        try:
            return decode(raw, kind)
        except ProtocolError:
            raise StateError(f"{self.dir / name} is corrupt{advice}") from None

    def load_credentials(self) -> Credentials | None:
        return self._load(CREDENTIALS, Credentials, "; remove it to re-register")

    def save_credentials(self, creds: Credentials) -> None:
        atomic_write(self.dir / CREDENTIALS, msgspec.json.encode(creds))

    def forget_credentials(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / CREDENTIALS).unlink()

    def load_desired(self) -> Assignments | None:
        return self._load(DESIRED, Assignments)

    def save_desired(self, assignments: Assignments) -> None:
        # The desired set carries container env (secrets), hence 0600 too. Backup jobs
        # carry repository passwords and S3 keys that must never reach the disk at all.
        kept = msgspec.structs.replace(assignments, backups=[])
        atomic_write(self.dir / DESIRED, encode(kept))
