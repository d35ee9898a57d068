"""The real OpenClaw gateway starts Telegram from the token a customer sets: the spec the
control plane builds for a user with `TELEGRAM_BOT_TOKEN` among their secrets (the
openclaw profile, control/workers/specs.py), carried out by the agent's own reconciler
on the real Docker engine and the real image. No `channels.telegram` key is written:
the bundled Telegram plugin counts the token in `.env` as configured and the gateway
enables it (docs/openclaw-config.md, 11). The token is fake and the check needs no
network: the gateway says it starts the channel before it calls Telegram. The token
appears in the secret file only, never in `docker inspect`, `docker logs` or the
gateway's own log file."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container

from agent.metadata_block import MetadataBlock
from agent.ownership import Owner
from agent.reconcile import Reconciler
from agent.reconcile_steps import ReconcilerOptions
from agent.runtime import DockerRuntime
from agent.traefik import RouteOptions
from control.plans import Plan
from control.settings import Settings
from control.workers.specs import UserPlacement, build_spec
from shared.protocol import Assignments
from tenant.openclaw import build
from tests.agent.conftest import new_user, purge_user
from tests.agent.test_e2e import until

pytestmark = [pytest.mark.docker, pytest.mark.openclaw]

TOKEN = "7712345678:AAH-gateway-" + "Zq9" * 10  # fake: a value no log line has by chance
WORKER = "srv-channels01"
PLAN = Plan(name="default", memory_mb=2048, cpus=0.75, pids=512, disk_gb=5)
# Measured: the gateway starts Telegram 15-25 s after the container on a 2-core machine;
# the bound allows for a busy shared CI machine.
STARTED_WITHIN = 240.0
ENABLED = "Telegram configured, enabled automatically"
STARTING = "[telegram] [default] starting provider"


@pytest.fixture
def dclient() -> Iterator[docker.DockerClient]:
    client = docker.from_env(version="auto", timeout=60)
    yield client
    client.close()


@pytest.fixture
async def reconciler(tmp_path: Path) -> AsyncIterator[Reconciler]:
    rec = Reconciler(
        DockerRuntime(None, timeout=60),
        MetadataBlock(["iptables"]),
        ReconcilerOptions(
            traefik_dir=tmp_path / "traefik", route_options=RouteOptions(("web",), tls=False)
        ),
        Owner(WORKER),
    )
    yield rec
    await rec.close()
    rec.runtime.close()


@pytest.fixture
def user(dclient: docker.DockerClient) -> Iterator[str]:
    made = new_user()
    yield made
    purge_user(dclient, made)


def logs(container: Container) -> str:
    return str(container.logs().decode(errors="replace"))


async def test_the_gateway_starts_telegram_from_the_customers_token(
    reconciler: Reconciler, dclient: docker.DockerClient, user: str
) -> None:
    settings = Settings(
        admin_token="a" * 32,
        internal_secret="b" * 32,
        local_router_address="",
        agent_image=build.ensure_image(),
    )
    placement = UserPlacement(
        user,
        user,
        PLAN,
        {"OPENCLAW_GATEWAY_TOKEN": "gw-" + "k" * 40},
        {"TELEGRAM_BOT_TOKEN": TOKEN},
    )
    spec = build_spec(placement, settings, WORKER)
    assert TOKEN not in json.dumps([spec.env, spec.labels, spec.command])
    await reconciler.reconcile(Assignments(generation=1, containers=[spec]))
    [container] = dclient.containers.list(all=True, filters={"label": f"clawfleet.user={user}"})

    async def started() -> bool:
        container.reload()
        assert container.status in ("created", "running"), logs(container)[-3000:]
        return STARTING in logs(container)

    await until(started, "the gateway starting Telegram", timeout=STARTED_WITHIN)
    assert ENABLED in logs(container)
    state = "/home/node/.openclaw"
    dotenv = container.exec_run(["cat", f"{state}/.env"], user="1000:1000").output.decode()
    assert dotenv == f"TELEGRAM_BOT_TOKEN={TOKEN}\n"
    config = container.exec_run(["cat", f"{state}/openclaw.json"], user="1000:1000").output
    assert "channels" not in json.loads(config)  # the platform wrote no channel key
    gateway_log = container.exec_run(["sh", "-c", "cat /tmp/openclaw/*.log"], user="1000:1000")
    container.reload()
    places = {
        "docker inspect": json.dumps(container.attrs),
        "docker logs": logs(container),
        "gateway log file": gateway_log.output.decode(errors="replace"),
    }
    assert [where for where, text in places.items() if TOKEN in text] == []
