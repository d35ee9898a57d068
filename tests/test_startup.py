"""`python -m control` as a real process: every start-up failure exits non-zero, at
once, with one clear line on stderr; a started control plane holds its database.

Cases that need another user (a database owned by root, read by the service user) run
the control plane as `nobody` (through setpriv) when the suite runs as root, and are
skipped otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from control.__main__ import build_env
from control.db.store import Store
from tests.fixtures import ADMIN_TOKEN, INTERNAL_SECRET, free_port

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0  # a failed start is over in about a second; a hang takes forever
NOBODY = 65534
IS_ROOT = os.geteuid() == 0
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
CAN_SWITCH_USER = IS_ROOT and shutil.which("setpriv") is not None


def control_env(database: Path, port: int, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(database.parent),
        "PYTHONPATH": str(REPO),
        "PYTHONDONTWRITEBYTECODE": "1",
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "INTERNAL_SECRET": INTERNAL_SECRET,
        "DATABASE_PATH": str(database),
        "LISTEN_PORT": str(port),
        "LOCAL_WORKERS_DIR": str(database.parent / "workers"),
        "LOCAL_ROUTER_ADDRESS": "",
        "MAX_SERVERS": "0",
        "WARM_HEADROOM": "0",
        # The local provider looks for Docker before it starts; these tests need none.
        "DOCKER_HOST": "unix:///nonexistent/docker.sock",
        **extra,
    }


def run_control(
    database: Path,
    *args: str,
    port: int | None = None,
    as_nobody: bool = False,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(AS_NOBODY if as_nobody else []), sys.executable, "-m", "control", *args],
        env=control_env(database, port or free_port()),
        cwd=cwd or database.parent,  # no stray ./.env
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )


def one_clear_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("clawfleet: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def service_dir(tmp_path: Path) -> Iterator[Path]:
    """A data directory the service user owns (nobody when running as root); pytest's
    own tmp_path is not reachable by another user."""
    if not CAN_SWITCH_USER:
        yield tmp_path
        return
    base = (
        Path(os.environ.get("TMPDIR", "/tmp"))
        / f"clawfleet-startup-{os.getpid()}-{time.monotonic_ns()}"
    )
    base.mkdir(mode=0o755)
    data = base / "data"
    data.mkdir(mode=0o700)
    os.chown(data, NOBODY, NOBODY)
    try:
        yield data
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=True)


async def make_database(path: Path) -> None:
    """A valid database, and its lock file, as the service user would leave them."""
    store = Store(str(path))
    await store.open()
    await store.close()
    if CAN_SWITCH_USER:
        for entry in path.parent.iterdir():
            os.chown(entry, NOBODY, NOBODY)


def test_garbage_file_exits_1_with_one_line(tmp_path: Path) -> None:
    database = tmp_path / "clawfleet.db"
    database.write_bytes(b"not a database, but long enough to have a header" * 4)
    result = run_control(database)
    assert result.returncode == 1
    assert "file is not a database" in one_clear_line(result)


async def test_read_only_database_of_the_service_user_exits_1(service_dir: Path) -> None:
    database = service_dir / "clawfleet.db"
    await make_database(database)
    os.chmod(database, 0o400)
    if IS_ROOT and not CAN_SWITCH_USER:  # root writes whatever the mode
        pytest.skip("running as root without setpriv")
    result = run_control(database, as_nobody=IS_ROOT)
    assert result.returncode == 1
    assert "readonly database" in one_clear_line(result)
    assert os.stat(database).st_mode & 0o777 == 0o400  # never loosened


@pytest.mark.skipif(not CAN_SWITCH_USER, reason="needs root and setpriv to run as nobody")
@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (0o644, "readable by other users (mode 0644)"),
        (0o600, "unable to open database file"),
    ],
)
async def test_root_owned_database_exits_1(service_dir: Path, mode: int, expected: str) -> None:
    database = service_dir / "clawfleet.db"
    await make_database(database)
    os.chown(database, 0, 0)  # owned by root, the service runs as nobody
    os.chmod(database, mode)
    result = run_control(database, as_nobody=True)
    assert result.returncode == 1
    assert expected in one_clear_line(result)


def test_unreadable_local_secret_exits_1(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    (secrets / "admin_token").mkdir(parents=True)  # a directory where a file must be
    env_database = tmp_path / "clawfleet.db"
    result = subprocess.run(
        [sys.executable, "-m", "control", "--local-secrets", str(secrets)],
        env={k: v for k, v in control_env(env_database, free_port()).items() if k != "ADMIN_TOKEN"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    assert result.returncode == 1
    assert "local secrets" in one_clear_line(result)


def test_port_in_use_exits_1_before_anything_starts(tmp_path: Path) -> None:
    database = tmp_path / "data" / "clawfleet.db"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_control(database, port=port, cwd=tmp_path)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in one_clear_line(result)
    assert not database.parent.exists()  # the store was never opened


def wait_until_serving(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)  # a process we do not control: poll its port
    raise AssertionError("the first control plane did not start")


@pytest.fixture
def first_plane(tmp_path: Path) -> Iterator[Callable[[Path], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(database: Path) -> subprocess.Popen[str]:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "control"],
            env=control_env(database, port),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        wait_until_serving(port, proc)
        return proc

    yield start
    for proc in started:
        proc.terminate()
        proc.communicate(timeout=START_TIMEOUT)


def test_second_control_plane_on_one_database_exits_1(
    tmp_path: Path, first_plane: Callable[[Path], subprocess.Popen[str]]
) -> None:
    database = tmp_path / "data" / "clawfleet.db"
    first = first_plane(database)
    second = run_control(database, cwd=tmp_path)
    assert second.returncode == 1
    line = one_clear_line(second)
    assert f"another control plane (pid {first.pid})" in line
    assert first.poll() is None  # the first one serves on
    first.terminate()
    assert first.wait(timeout=START_TIMEOUT) == 0
    # Its lock went with it: the database is free again.
    again = first_plane(database)
    assert again.poll() is None


def test_local_secrets_directory_is_made_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "data"
    directory.mkdir(mode=0o755)  # as `make run`'s `mkdir -p data` leaves it
    directory.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    for name in ("ADMIN_TOKEN", "INTERNAL_SECRET", "STRIPE_WEBHOOK_SECRET", "DATABASE_PATH"):
        monkeypatch.delenv(name, raising=False)
    env = build_env(argparse.Namespace(local_secrets=str(directory)))
    assert env["DATABASE_PATH"] == str(directory / "clawfleet.db")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()} == {0o600}
