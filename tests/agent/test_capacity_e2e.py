"""End to end: a user with no capacity → the autoscaler creates a server at the fake
Hetzner API → the "server boots" (a real agent started with the values of the
rendered agent.env) → it registers → the container runs on the real Docker engine →
the user is `running`. No payment involved: `POST /v1/users` is the seam."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from control.appkeys import SCALER
from control.capacity.providers.local import agent_env_from_user_data
from tests.agent.conftest import AgentProcess, new_user
from tests.agent.test_e2e import plane_settings, until, wait_running
from tests.fakes.hetzner import HetznerFake, agent_dist, host_sized_type, provider_with_timeout
from tests.fixtures import ControlPlane

pytestmark = pytest.mark.docker


async def test_pending_user_gets_a_new_server_that_boots_registers_and_runs_it(
    control_factory: Callable[..., ControlPlane],
    hetzner_fake: HetznerFake,
    test_images: dict[str, str],
    agent_proc: list[AgentProcess],
    users: list[str],
    tmp_path: Path,
) -> None:
    dist = agent_dist(tmp_path / "dist")
    provider = provider_with_timeout(5.0)
    # The "server" is this machine: its type must have what the agent will honestly
    # report, or capacity trust rightly flags the worker as over-claiming.
    hetzner_fake.server_types.append(host_sized_type())

    control = control_factory(
        provider,
        **plane_settings(),
        provider="hetzner",
        hetzner_api_token=hetzner_fake.token,
        hetzner_api_endpoint=hetzner_fake.url,
        agent_dist_dir=dist,
        max_servers=3,
        autoscale_interval=3600.0,
        hetzner_server_types=("cxhost",),
    )
    await control.start()
    user = new_user()
    users.append(user)
    status, body = await control.admin("POST", "/v1/users", {"user_id": user, "subdomain": user})
    assert status == 201 and body["state"] == "pending"

    # The placement that left the user pending triggered a run: a server is created.
    await until(lambda: _created(hetzner_fake), "the autoscaler to create a server", 20)
    user_data = hetzner_fake.create_requests[0]["user_data"]
    assert user_data.startswith("#!/bin/bash") and len(user_data.encode()) < 32 * 1024
    env = agent_env_from_user_data(user_data)

    # The server boots: cloud-init would start the agent with exactly these values.
    agent = AgentProcess(
        {
            "CONTROL_URL": env["CONTROL_URL"],
            "BOOTSTRAP_TOKEN": env["BOOTSTRAP_TOKEN"],
            "AGENT_ENV_FILE": str(tmp_path / "absent.env"),
            "STATE_DIR": str(tmp_path / "state"),
            "TRAEFIK_DYNAMIC_DIR": str(tmp_path / "traefik"),
            "TRAEFIK_TLS": "false",
            "RECONCILE_INTERVAL": "1",
            "POLL_WAIT": "2",
            "HEALTH_GATE": "20",
        },
        tmp_path / "agent.log",
    )
    (tmp_path / "absent.env").write_text("")
    agent_proc.append(agent)
    agent.start()

    running = await wait_running(control, user)
    _, servers = await control.admin("GET", "/v1/servers")
    (server,) = servers["servers"]
    assert running["server_id"] == server["id"]
    assert server["status"] == "active"
    assert server["provider_id"] == str(next(iter(hetzner_fake.servers)))
    assert running["container"]["health"] == "healthy"
    # Nothing more to create: the demand is met.
    assert control.app is not None
    await control.app[SCALER].run()
    assert len(hetzner_fake.servers) == 1
    assert env["BOOTSTRAP_TOKEN"].partition(".")[2] not in agent.log()


async def _created(fake: HetznerFake) -> bool:
    return len(fake.create_requests) == 1
