"""Fixtures for the agent's tests: test images, per-test user ids and cleanup of every
container, network and volume carrying a test user's label, the agent as a real
process, and Traefik."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from agent.runtime import LABEL_USER
from tests.agent import images

ROOT = Path(__file__).resolve().parents[2]
GOOD = "clawfleet-test/agent:good"
GOOD2 = "clawfleet-test/agent:good2"
BROKEN = "clawfleet-test/agent:broken"


@pytest.fixture(scope="session")
def dclient() -> Iterator[docker.DockerClient]:
    client = docker.from_env(version="auto", timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="session")
def test_images(dclient: docker.DockerClient) -> Iterator[dict[str, str]]:
    built = {
        GOOD: images.build(dclient, GOOD, healthy=True, marker="v1"),
        GOOD2: images.build(dclient, GOOD2, healthy=True, marker="v2"),
        BROKEN: images.build(dclient, BROKEN, healthy=False, marker="broken"),
    }
    yield built
    for tag in built:
        with contextlib.suppress(docker.errors.APIError):
            dclient.images.remove(tag, force=True)


def purge_user(client: docker.DockerClient, user_id: str) -> None:
    flt = {"label": f"{LABEL_USER}={user_id}"}
    for c in client.containers.list(all=True, filters=flt, ignore_removed=True):
        with contextlib.suppress(docker.errors.APIError):
            c.remove(force=True)
    for n in client.networks.list(filters=flt):
        with contextlib.suppress(docker.errors.APIError):
            n.remove()
    for v in client.volumes.list(filters=flt):
        with contextlib.suppress(docker.errors.APIError):
            v.remove(force=True)


@pytest.fixture
def users(dclient: docker.DockerClient) -> Iterator[list[str]]:
    """Hands out unique user ids (`users.append(new_user())`) and purges them afterwards."""
    made: list[str] = []
    yield made
    for user in made:
        purge_user(dclient, user)


def new_user() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


class AgentProcess:
    """`python -m agent` as a real child process with its own env and log file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.secret = ""

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        env.update(self.env)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
        log.close()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self, timeout: float = 15) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def agent_proc(tmp_path: Path) -> Iterator[list[AgentProcess]]:
    made: list[AgentProcess] = []
    yield made
    for a in made:
        a.stop()
