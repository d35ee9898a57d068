"""A new sign-up Checkout is demand about to arrive (issue 15, point 6): the autoscaler
runs at once, not at its next tick, so the buyer's server is on its way while they type
their card number. Through the real app, the real stripe library against the fake Stripe
and the real hcloud client against the fake Hetzner API, whose scheduled autoscaler
runs are an hour apart here: only the sign-up can have asked for this run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from control.plans import DEFAULT_PLAN
from tests import stripe_events as se
from tests.agent.test_e2e import until
from tests.fakes.hetzner import HetznerFake, agent_dist, fleet_settings, provider_with_timeout
from tests.fakes.stripe_api import StripeFake
from tests.fixtures import ControlPlane
from tests.portal_signup import PRO, sign_up
from tests.test_checkout_headroom import run


async def test_a_new_checkout_runs_the_autoscaler_now(
    control_factory: Callable[..., ControlPlane],
    hetzner_fake: HetznerFake,
    stripe_fake: StripeFake,
    tmp_path: Path,
) -> None:
    stripe_fake.checkout.prices.add(se.PRICE)
    settings: dict[str, Any] = fleet_settings(hetzner_fake, agent_dist(tmp_path / "dist")) | {
        "stripe_webhook_secret": se.WEBHOOK_SECRET,
        "stripe_secret_key": stripe_fake.api_key,
        "stripe_api_base": stripe_fake.url,
        "plans": {"default": DEFAULT_PLAN, "pro": PRO},
    }
    control = control_factory(provider_with_timeout(2.0), **settings)
    await control.start()
    await run(control)  # the start-up run: nobody waits, no headroom
    assert hetzner_fake.create_requests == []
    reply = await sign_up(control)
    assert reply.status == 201, reply.body

    async def created() -> bool:
        return bool(hetzner_fake.create_requests)

    await until(created, "a server created for the buyer", timeout=10)
    assert len(hetzner_fake.create_requests) == 1
