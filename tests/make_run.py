"""`make run` as a newcomer runs it, for the tests and the benchmark that drive it: the
control plane as a real process on its embedded defaults (SQLite, the local provider,
its Traefik on 127.0.0.1, OpenClaw as the tenant), in its own directory, and the
`clawfleet` CLI run there as the README says.

The only settings changed from the defaults are ports (free ones, so runs can share a
machine) and AGENT_IMAGE, which points at a closed local port so the pull fails at once
as it does on a machine with no registry. `close()` stops the control plane, the local
worker's agent and Traefik (as `make stop-workers` does) and removes the users'
containers, networks and volumes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker

from tests.agent.conftest import purge_user
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class MakeRun:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.router_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.users: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 900.0) -> None:
        """Starts `python -m control --local-secrets data` (what `make run` runs) and
        waits until it serves; the first run may build the OpenClaw image."""
        self.home.mkdir(parents=True, exist_ok=True)
        since = len(self.log()) if (self.home / "control.log").exists() else 0
        env = {
            **{k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")},
            "LISTEN_PORT": str(self.port),
            "LOCAL_ROUTER_ADDRESS": f"127.0.0.1:{self.router_port}",
            "AGENT_IMAGE": f"127.0.0.1:{free_port()}/openclaw/openclaw:unreachable",
            "PYTHONPATH": str(ROOT),
        }
        with (self.home / "control.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "control", "--local-secrets", "data"],
                cwd=self.home,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while "Clawfleet control plane on" not in self.log()[since:]:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the control plane did not start:\n{self.log()[-3000:]}")
            time.sleep(0.2)

    def log(self) -> str:
        return (self.home / "control.log").read_text(errors="replace")

    def cli(self, *args: str, timeout: float = 60.0) -> str:
        """`clawfleet <args>` in the run's directory, where it finds data/admin_token."""
        self.users.extend(a for a in args[1:2] if args[0] == "simulate-payment")
        done = subprocess.run(
            [str(BIN / "clawfleet"), "--url", self.url, *args],
            cwd=self.home,
            env={k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"clawfleet {args[0]}: exit {done.returncode}: {done.stderr}")
        return done.stdout

    def user(self, user: str) -> dict[str, Any]:
        return dict(json.loads(self.cli("user", user, "--json")))

    def wait_running(self, user: str, timeout: float = 240.0, every: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while (state := self.user(user).get("state")) != "running":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{user} is {state}, not running, after {timeout} s")
            time.sleep(every)

    def containers(self, user: str) -> list[Any]:
        client = docker.from_env(timeout=60)
        try:
            return list(client.containers.list(filters={"label": f"clawfleet.user={user}"}))
        finally:
            client.close()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
            if self.proc.poll() is None:
                self.proc.kill()
        workers = self.home / "data" / "workers"
        # Each agent's server.json, and the machine's one router (router.json).
        for meta in [*workers.glob("*/server.json"), *workers.glob("router.json")]:
            found = json.loads(meta.read_text())
            for pid in (found.get("pid"), found.get("router_pid")):
                if pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGTERM)
        client = docker.from_env(timeout=60)
        try:
            for user in self.users:
                purge_user(client, user)
        finally:
            client.close()
