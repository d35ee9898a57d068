"""Protocol edge cases against a tiny fake control plane: a revoked worker stops and
says so; an unreachable control plane at first start does not crash the agent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from agent.state import Credentials, StateStore
from tests.agent.conftest import AgentProcess
from tests.agent.test_e2e import until


@pytest.fixture
async def revoking_plane() -> AsyncIterator[tuple[str, list[str]]]:
    seen: list[str] = []

    async def revoked(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response(
            {"error": {"code": "worker_revoked", "message": "revoked"}}, status=403
        )

    app = web.Application()
    app.router.add_post("/v1/agent/heartbeat", revoked)
    app.router.add_get("/v1/agent/assignments", revoked)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


async def test_revoked_worker_stops_with_status_3(
    revoking_plane: tuple[str, list[str]], tmp_path: Path, agent_proc: list[AgentProcess]
) -> None:
    url, seen = revoking_plane
    StateStore(tmp_path / "state").save_credentials(Credentials("w-revoked", "sekrit-value"))
    agent = AgentProcess(
        {
            "AGENT_ENV_FILE": "/dev/null",
            "CONTROL_URL": url,
            "STATE_DIR": str(tmp_path / "state"),
            "TRAEFIK_DYNAMIC_DIR": str(tmp_path / "traefik"),
            "RECONCILE_INTERVAL": "1",
        },
        tmp_path / "agent.log",
    )
    agent_proc.append(agent)
    agent.start()
    assert agent.proc is not None
    proc = agent.proc

    async def exited() -> bool:
        return proc.poll() is not None

    await until(exited, "agent exit after revocation", timeout=30)
    assert proc.returncode == 3
    assert seen
    log = agent.log()
    assert "revoked" in log and "w-revoked" in log
    assert "sekrit-value" not in log


async def test_first_start_with_control_plane_down_keeps_retrying(
    tmp_path: Path, agent_proc: list[AgentProcess]
) -> None:
    token = tmp_path / "token"
    token.write_text("tok.bootstrap-secret")
    agent = AgentProcess(
        {
            "AGENT_ENV_FILE": "/dev/null",
            "CONTROL_URL": "http://127.0.0.1:9",  # discard port: nothing listens
            "BOOTSTRAP_TOKEN_FILE": str(token),
            "STATE_DIR": str(tmp_path / "state"),
            "TRAEFIK_DYNAMIC_DIR": str(tmp_path / "traefik"),
            "BACKOFF_BASE": "0.1",
            "BACKOFF_MAX": "0.5",
        },
        tmp_path / "agent.log",
    )
    agent_proc.append(agent)
    agent.start()

    async def retried() -> bool:
        return agent.log().count("registration: control plane unavailable") >= 3

    await until(retried, "registration retries")
    assert agent.proc is not None and agent.proc.poll() is None
    assert token.exists(), "the token is kept until registration succeeds"
    assert agent.terminate(timeout=10) == 0
    assert "bootstrap-secret" not in agent.log()
