"""Real agent, real Docker: a Stripe payment ends in a running, healthy container; and a
worker whose record was lost (database restored from a backup) re-registers with the
bootstrap token it still holds."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from tests import stripe_events as se
from tests.agent.conftest import AgentProcess, new_user
from tests.agent.test_e2e import make_agent, plane_settings, until, user_containers, wait_running
from tests.fixtures import ControlPlane

pytestmark = pytest.mark.docker


async def test_checkout_completed_runs_a_healthy_container(
    control_factory: Callable[..., ControlPlane],
    test_images: dict[str, str],
    tmp_path: Path,
    agent_proc: list[AgentProcess],
    dclient: docker.DockerClient,
    users: list[str],
) -> None:
    plane = control_factory(**plane_settings(), stripe_webhook_secret=se.WEBHOOK_SECRET)
    await plane.start()
    await make_agent(plane, tmp_path, agent_proc)
    user = new_user()
    users.append(user)
    session = se.checkout_session(client_reference_id=user, metadata={"subdomain": user})
    sub = se.subscription(status="active", price="price_clawfleet_default")
    for event in (
        se.event("checkout.session.completed", session),
        se.event("customer.subscription.created", sub),
    ):
        body = se.encode(event)
        async with plane.session.post(
            plane.url + "/v1/stripe/webhook", data=body, headers={"Stripe-Signature": se.sign(body)}
        ) as r:
            assert r.status == 200, await r.text()
    running = await wait_running(plane, user)
    assert running["billing_status"] == "active" and running["container"]["health"] == "healthy"
    [container] = user_containers(dclient, user)
    env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
    _, access = await plane.admin("GET", f"/v1/users/{user}/access")
    assert env["OPENCLAW_GATEWAY_TOKEN"] == access["token"]


async def test_worker_lost_by_a_restored_database_re_registers_with_its_token(
    control_factory: Callable[..., ControlPlane],
    test_images: dict[str, str],
    tmp_path: Path,
    agent_proc: list[AgentProcess],
) -> None:
    plane = control_factory(**plane_settings())
    await plane.start()
    status, body = await plane.admin("POST", "/v1/join-tokens", {})
    assert status == 201
    await plane.stop()
    backup = tmp_path / "backup.db"
    db = Path(plane.settings.database_path)
    await asyncio.to_thread(shutil.copy, db, backup)  # taken before the worker registered
    await plane.start()
    (tmp_path / "agent.env").write_text(
        f"CONTROL_URL={plane.url}\nBOOTSTRAP_TOKEN={body['token']}\n"
    )
    agent = AgentProcess(
        {
            "AGENT_ENV_FILE": str(tmp_path / "agent.env"),
            "STATE_DIR": str(tmp_path / "state"),
            "TRAEFIK_DYNAMIC_DIR": str(tmp_path / "traefik"),
            "TRAEFIK_TLS": "false",
            "POLL_WAIT": "1",
            "BACKOFF_BASE": "0.2",
            "BACKOFF_MAX": "1",
        },
        tmp_path / "agent.log",
    )
    agent_proc.append(agent)
    agent.start()

    async def servers() -> list[str]:
        _, listing = await plane.admin("GET", "/v1/servers")
        return [s["id"] for s in listing["servers"] if s["last_heartbeat_age"] is not None]

    first = await until(servers, "first registration and heartbeat")
    # The control plane is restored from the backup: it has never heard of this worker,
    # and the token the agent still holds is unused there.
    await plane.stop()
    await asyncio.to_thread(shutil.copy, backup, db)
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    await plane.start()
    # The running agent forgot the token after registering; restarted, it reads agent.env
    # again and still holds a token the restored control plane accepts.
    agent.kill9()
    agent.start()
    second = await until(servers, "re-registration", timeout=60)
    assert second != first and len(second) == 1
    assert "does not know this worker; re-registering" in agent.log()
