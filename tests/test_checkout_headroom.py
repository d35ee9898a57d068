"""Capacity ahead of payment (issue 15, point 6) through the real autoscaler against the
fake Hetzner Cloud API: an open sign-up Checkout makes the autoscaler create the server
its buyer will need before Stripe's webhook arrives, for CHECKOUT_HEADROOM_MINUTES."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from control.appkeys import SCALER, STORE
from control.plans import parse_plans
from control.portal import checkouts
from tests.fakes.hetzner import HetznerFake, agent_dist, fleet_settings, provider_with_timeout
from tests.fixtures import ControlPlane

Start = Callable[..., Awaitable[ControlPlane]]
BIG_PLAN = {"big": {"memory_mb": 2048, "cpus": 1, "pids": 512, "disk_gb": 10}}


@pytest.fixture
def cloud(
    control_factory: Callable[..., ControlPlane], hetzner_fake: HetznerFake, tmp_path: Path
) -> Start:
    dist = agent_dist(tmp_path / "dist")

    async def start(**overrides: Any) -> ControlPlane:
        settings = fleet_settings(hetzner_fake, dist) | overrides
        plane = control_factory(provider_with_timeout(2.0), **settings)
        await plane.start()
        await run(plane)  # the start-up run: nothing to do yet
        return plane

    return start


async def run(control: ControlPlane) -> None:
    assert control.app is not None
    await control.app[SCALER].run(True)


async def open_checkout(
    control: ControlPlane, subdomain: str, plan: str = "default", age: float = 0.0
) -> None:
    """A buyer on Stripe's Checkout page, as the sign-up leaves it: an open checkout
    (control/portal/checkouts.py, its only writer) created `age` seconds ago."""
    assert control.app is not None
    now = time.time()
    row: dict[str, str | float] = {
        "id": f"co_{secrets.token_hex(8)}",
        "token_hash": checkouts.token_hash(secrets.token_urlsafe(16)),
        "user_id": f"u_{secrets.token_hex(8)}",
        "subdomain": subdomain,
        "plan": plan,
        "email": f"{subdomain}@example.com",
        "expires_at": now + 3600,
    }

    async def apply(conn: aiosqlite.Connection) -> None:
        await checkouts.reserve(conn, row, now - age)

    await control.app[STORE].write(apply)


async def scale_up_reasons(control: ControlPlane) -> list[str]:
    _, body = await control.admin("GET", "/v1/events?limit=1000")
    return [e["message"] for e in body["events"] if e["kind"] == "scale_up"]


async def test_an_open_checkout_creates_its_server_before_the_payment(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud()
    assert len(hetzner_fake.servers) == 0  # no headroom, nobody waiting
    await open_checkout(control, "alice")
    await run(control)
    assert len(hetzner_fake.servers) == 1  # ready for alice before Stripe's webhook
    assert "headroom 1" in (await scale_up_reasons(control))[0]
    await open_checkout(control, "bob")
    await open_checkout(control, "carol")
    await run(control)
    assert len(hetzner_fake.servers) == 1  # the booting cpx22 holds all three
    await open_checkout(control, "dave")
    await run(control)
    assert len(hetzner_fake.servers) == 2


async def test_a_bigger_plan_counts_for_its_size(cloud: Start, hetzner_fake: HetznerFake) -> None:
    control = await cloud(plans=parse_plans(json.dumps(BIG_PLAN)))
    for name in ("alice", "bob"):
        await open_checkout(control, name, plan="big")
    await run(control)
    # Two users of twice the default plan: four units, more than one cpx22's three.
    assert len(hetzner_fake.servers) == 2


@pytest.mark.parametrize(
    ("minutes", "age", "servers"),
    [
        (30, 0.0, 1),
        (30, 29 * 60.0, 1),
        (30, 31 * 60.0, 0),  # opened longer ago than CHECKOUT_HEADROOM_MINUTES: not counted
        (0, 0.0, 0),  # 0: open checkouts are not counted
    ],
)
async def test_checkouts_count_for_checkout_headroom_minutes(
    cloud: Start, hetzner_fake: HetznerFake, minutes: int, age: float, servers: int
) -> None:
    control = await cloud(checkout_headroom_minutes=minutes)
    await open_checkout(control, "alice", age=age)
    await run(control)
    assert len(hetzner_fake.servers) == servers
