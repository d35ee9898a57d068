"""Docker engine restart: a SECOND dockerd of the test's own (own data-root, exec-root,
socket, containerd namespaces, own default bridge, no iptables), so the shared engine at
/var/run/docker.sock is never restarted.

Not `--bridge=none`: a dockerd started with it deletes the host's `docker0` interface,
which breaks the shared engine's default bridge. The test gives the second engine a
bridge interface of its own instead and deletes it afterwards."""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from tests.agent.conftest import GOOD, AgentProcess, new_user
from tests.agent.test_e2e import make_agent, plane_settings, until, wait_running, worker_id
from tests.fixtures import ControlPlane

pytestmark = pytest.mark.docker


class SecondDockerd:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cfd", dir="/tmp"))
        self.sock = f"unix://{self.dir}/d.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.bridge = f"cfbr{self.dir.name[-8:]}"[:15]

    def make_bridge(self) -> None:
        for argv in (
            ["ip", "link", "add", self.bridge, "type", "bridge"],
            ["ip", "addr", "add", "192.168.251.1/24", "dev", self.bridge],
            ["ip", "link", "set", self.bridge, "up"],
        ):
            subprocess.run(argv, check=True, capture_output=True)

    def delete_bridge(self) -> None:
        subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True)

    def start(self) -> None:
        ns = self.dir.name
        self.proc = subprocess.Popen(
            [
                "dockerd",
                f"--data-root={self.dir}/data",
                f"--exec-root={self.dir}/x",
                f"--pidfile={self.dir}/d.pid",
                f"-H={self.sock}",
                f"--containerd-namespace={ns}",
                f"--containerd-plugins-namespace={ns}p",
                f"--bridge={self.bridge}",
                "--iptables=false",
                "--ip-masq=false",
            ],
            stdout=(self.dir / "dockerd.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                client = docker.DockerClient(base_url=self.sock, version="auto", timeout=5)
                client.ping()
                client.close()
                return
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError((self.dir / "dockerd.log").read_text()[-2000:]) from None
                # Bounded polling: a starting dockerd offers nothing to await but its socket.
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)
        self.proc = None

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.sock, version="auto", timeout=60)


@pytest.fixture
def dockerd2(dclient: docker.DockerClient, test_images: dict[str, str]) -> Iterator[SecondDockerd]:
    if shutil.which("dockerd") is None:
        pytest.skip("dockerd not installed")
    d = SecondDockerd()
    d.make_bridge()
    d.start()
    try:
        blob = b"".join(dclient.images.get(GOOD).save(named=True))
        c = d.client()
        c.images.load(io.BytesIO(blob).read())
        c.close()
        yield d
    finally:
        try:
            if d.proc is None:
                d.start()
            c = d.client()
            for ctr in c.containers.list(all=True):
                ctr.remove(force=True)
            c.networks.prune()  # else each run left a bridge interface on the host
            c.close()
        except Exception:  # noqa: S110 - the data root goes away below regardless
            pass
        d.stop()
        d.delete_bridge()
        shutil.rmtree(d.dir, ignore_errors=True)


async def test_containers_back_and_reported_after_engine_restart(
    control_factory: Callable[..., ControlPlane],
    tmp_path: Path,
    agent_proc: list[AgentProcess],
    dockerd2: SecondDockerd,
    users: list[str],
) -> None:
    plane = control_factory(**plane_settings())
    await plane.start()
    agent = await make_agent(plane, tmp_path, agent_proc, extra_env={"DOCKER_HOST": dockerd2.sock})
    user = new_user()
    status, body = await plane.admin("POST", "/v1/users", json={"user_id": user, "subdomain": user})
    assert status == 201, body
    await wait_running(plane, user)
    c2 = dockerd2.client()
    [before] = c2.containers.list(filters={"label": f"clawfleet.user={user}"})
    route = tmp_path / "traefik" / f"clawfleet-{user}@{worker_id(tmp_path)}.yaml"
    old_port = before.attrs["NetworkSettings"]["Ports"]["18789/tcp"][0]["HostPort"]
    assert f"127.0.0.1:{old_port}" in route.read_text()

    await asyncio.to_thread(dockerd2.stop)
    mark = len(agent.log())

    async def engine_gone_seen() -> bool:
        tail = agent.log()[mark:]
        return "docker unavailable" in tail or "reconcile failed" in tail

    await until(engine_gone_seen, "the agent noticing the engine is gone")
    # It noticed, and must not have crashed.
    assert agent.proc is not None and agent.proc.poll() is None
    await asyncio.to_thread(dockerd2.start)

    c2 = dockerd2.client()

    async def back() -> bool:
        found = c2.containers.list(filters={"label": f"clawfleet.user={user}"})
        return len(found) == 1 and found[0].status == "running"

    await until(back, "container running again after the engine restart")
    [after] = c2.containers.list(filters={"label": f"clawfleet.user={user}"})
    assert after.id == before.id  # restarted by Docker's policy, not recreated
    new_port = after.attrs["NetworkSettings"]["Ports"]["18789/tcp"][0]["HostPort"]

    async def rerouted() -> bool:
        return f"127.0.0.1:{new_port}" in route.read_text()

    await until(rerouted, "route rewritten to the new published port")
    await wait_running(plane, user)
    assert agent.proc.poll() is None
    c2.close()
