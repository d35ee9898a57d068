"""A throwaway PostgreSQL cluster for the tests of the PostgreSQL backend.

One cluster per pytest process (each xdist worker starts its own), made with Debian's
`initdb` and `pg_ctl` in a fresh directory under /tmp: it listens on 127.0.0.1 only, on
a reserved free port (tests/ports.py), with its socket in its own directory, fsync off
(nothing in it outlives the run). PostgreSQL refuses to run as root, so under root
(CI) the cluster belongs to the `postgres` user (or `nobody`) and every command runs
through `runuser`. `stop()` stops it at once (`-m immediate`) and removes its directory;
it is safe to call twice. Each test gets its own database (`new_database()`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.ports import free_port


def binaries() -> Path | None:
    """The newest installed PostgreSQL's bin directory, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    return Path(found[-1]).parent if found else None


def _owner() -> pwd.struct_passwd | None:
    """The user the cluster runs as when we are root, else None (we run it ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root with neither a postgres nor a nobody user")


class PostgresServer:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.owner = _owner()
        self.root = Path(tempfile.mkdtemp(prefix="clawfleet-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.port = free_port()
        self.user = self.owner.pw_name if self.owner else pwd.getpwuid(os.geteuid()).pw_name
        self._started = False

    def _run(self, *argv: str) -> None:
        prefix = ["runuser", "-u", self.owner.pw_name, "--"] if self.owner else []
        done = subprocess.run(
            [*prefix, *argv], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr[-2000:]}")

    def start(self) -> None:
        self.sockets.mkdir()
        if self.owner:
            for path in (self.root, self.sockets):
                os.chown(path, self.owner.pw_uid, self.owner.pw_gid)
        self._run(
            str(self.bindir / "initdb"),
            "-D", str(self.data), "-U", self.user, "-A", "trust", "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.sockets} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._started = True
        self._run(
            str(self.bindir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data),
            "-l", str(self.root / "log"), "-o", options,
        )  # fmt: skip

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database's URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:16]}"
        with contextlib.closing(psycopg.connect(self.url(), autocommit=True)) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "log").read_text(errors="replace")[-4000:]
        return ""

    def _kill_postmaster(self) -> None:
        """SIGQUIT (PostgreSQL's immediate shutdown) to the postmaster pg_ctl could not stop."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)

    def stop(self) -> None:
        try:
            if self._started:
                self._started = False
                try:
                    self._run(
                        str(self.bindir / "pg_ctl"), "stop", "-m", "immediate", "-w",
                        "-D", str(self.data),
                    )  # fmt: skip
                except (RuntimeError, subprocess.TimeoutExpired):
                    self._kill_postmaster()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
