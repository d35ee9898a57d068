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
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import pytest

from agent.runtime import LABEL_USER
from control.capacity.providers.local import LocalProvider
from tests.agent import images
from tests.fixtures import PlaneFactory

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
def test_images(dclient: docker.DockerClient) -> dict[str, str]:
    """The busybox test images, built (from the engine's cache after the first time) and
    never removed: under xdist each worker runs its own session, and one that finished
    first used to remove the images under the other's running containers, which then
    never came back (a stopped user's container is re-created from its image)."""
    return {
        GOOD: images.build(dclient, GOOD, healthy=True, marker="v1"),
        GOOD2: images.build(dclient, GOOD2, healthy=True, marker="v2"),
        BROKEN: images.build(dclient, BROKEN, healthy=False, marker="broken"),
    }


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


def unmount_and_detach(root: Path) -> None:
    """Whatever a failed test left: mounts under the workers' dir, then the loop devices
    still backing its volume files (the machine has few: max_loop is often 8)."""
    for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
        target = line.split()[4]
        if target.startswith(f"{root}/"):
            subprocess.run(["umount", target], check=False)
    for backing in (root / "volumes").glob("*.img"):
        found = subprocess.run(
            ["losetup", "-j", str(backing)], capture_output=True, text=True, check=False
        )
        for line in found.stdout.splitlines():
            subprocess.run(["losetup", "-d", line.split(":", 1)[0]], check=False)


@pytest.fixture
async def local_providers(control_factory: PlaneFactory) -> AsyncIterator[list[LocalProvider]]:
    """The local providers a test's control planes made. Local agents outlive the control
    plane on purpose (like real servers), so this stops them, their containers and
    mounts. The control planes stop first: a running autoscaler would make a new local
    server for a user whose server was just deleted, and its agent would outlive the test."""
    made: list[LocalProvider] = []
    yield made
    await control_factory.close_all()
    for provider in made:
        for server in provider._list({}):
            provider._delete(server.provider_id)
        unmount_and_detach(provider.root)
