"""Real agent, real Docker, busybox tenant: the agent a sign-up starts while its buyer
is on the (stand-in) Checkout page (control/users/prestart.py) is the very container
that runs after the payment, not a replacement; and one whose buyer comes back without
paying is withdrawn: its container and its state volume are removed from the engine,
and its user is forgotten."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import docker
import pytest

from control.appkeys import STORE
from tests import stripe_events as se
from tests.agent.conftest import LABEL_USER, AgentProcess, new_user
from tests.agent.test_e2e import make_agent, plane_settings, until, user_containers, wait_running
from tests.fixtures import ControlPlane
from tests.test_checkout_stand_in import call, pay, sign_up

pytestmark = pytest.mark.docker


async def live_plane(
    control_factory: Callable[..., ControlPlane], tmp_path: Path, agent_proc: list[AgentProcess]
) -> ControlPlane:
    """The control plane with the Checkout stand-in, and a worker that has heartbeated
    (room now: a provisional user is never placed on a server still starting)."""
    plane = control_factory(
        **plane_settings(), stripe_webhook_secret=se.WEBHOOK_SECRET, stripe_secret_key=""
    )
    await plane.start()
    await make_agent(plane, tmp_path, agent_proc)

    async def live() -> bool:
        _, listing = await plane.admin("GET", "/v1/servers")
        return any(
            s["status"] == "active" and s["last_heartbeat_age"] is not None
            for s in listing["servers"]
        )

    await until(live, "the worker's first heartbeat")
    return plane


async def signed_up(plane: ControlPlane, users: list[str]) -> tuple[str, str]:
    """A buyer on the Checkout page: (their user id, the stand-in session id)."""
    name = new_user()
    session_id = await sign_up(plane, name)
    assert plane.app is not None
    row = await plane.app[STORE].fetch_one(
        "SELECT user_id FROM checkouts WHERE subdomain = ?", (name,)
    )
    assert row is not None
    users.append(row["user_id"])  # purged from the engine even if the test fails
    return str(row["user_id"]), session_id


async def applied(plane: ControlPlane, server_id: str) -> None:
    """Until the worker has applied every set its server was given so far."""
    _, server = await plane.admin("GET", f"/v1/servers/{server_id}")
    wanted = server["generation"]

    async def done() -> bool:
        _, now = await plane.admin("GET", f"/v1/servers/{server_id}")
        return bool((now["applied_generation"] or 0) >= wanted)

    await until(done, f"{server_id} applying generation {wanted}")


async def test_the_container_started_at_sign_up_runs_on_after_payment(
    control_factory: Callable[..., ControlPlane],
    test_images: dict[str, str],
    tmp_path: Path,
    agent_proc: list[AgentProcess],
    dclient: docker.DockerClient,
    users: list[str],
) -> None:
    plane = await live_plane(control_factory, tmp_path, agent_proc)
    user, session_id = await signed_up(plane, users)
    before: dict[str, Any] = await wait_running(plane, user)  # before any payment
    assert before["billing_state"] == "checkout"
    [started] = user_containers(dclient, user)
    status, body = await pay(plane, session_id)
    assert status == 200, body

    async def paid() -> dict[str, Any] | None:
        _, shown = await plane.admin("GET", f"/v1/users/{user}")
        return shown if shown.get("billing_state") == "run" else None

    after = await until(paid, f"{user} paid for")
    assert after["state"] == "running" and after["server_id"] == before["server_id"]
    await applied(plane, after["server_id"])  # whatever the payment changed, acted on
    [running] = user_containers(dclient, user)
    assert running.id == started.id
    running.reload()
    assert running.status == "running" and running.attrs["RestartCount"] == 0


async def test_a_buyer_who_comes_back_unpaid_leaves_no_container_and_no_volume(
    control_factory: Callable[..., ControlPlane],
    test_images: dict[str, str],
    tmp_path: Path,
    agent_proc: list[AgentProcess],
    dclient: docker.DockerClient,
    users: list[str],
) -> None:
    plane = await live_plane(control_factory, tmp_path, agent_proc)
    user, session_id = await signed_up(plane, users)
    await wait_running(plane, user)
    flt = {"label": f"{LABEL_USER}={user}"}
    assert dclient.volumes.list(filters=flt)  # its state, on the worker
    status, order, _ = await call(plane, "GET", f"/portal/api/stand-in/checkout/{session_id}")
    assert status == 200, order
    [token] = parse_qs(urlsplit(order["cancel_url"]).query)["back"]
    status, body, _ = await call(plane, "POST", f"/portal/api/status/{token}/cancel")
    assert status == 200, body

    async def forgotten() -> bool:  # the fleet's own sweep withdraws it, then purges it
        status, _ = await plane.admin("GET", f"/v1/users/{user}")
        return status == 404

    await until(forgotten, f"{user} withdrawn and purged", timeout=90)
    assert user_containers(dclient, user) == []
    assert dclient.volumes.list(filters=flt) == []
