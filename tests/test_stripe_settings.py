"""Which Stripe mode and account a deployment acts on (STRIPE_LIVEMODE,
STRIPE_ACCOUNT_ID in control/settings.py), and the wiring into the running webhook."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from control.settings import Settings, SettingsError
from tests import stripe_events as se
from tests.fixtures import ControlPlane

GOOD = {"ADMIN_TOKEN": "a" * 32, "INTERNAL_SECRET": "s" * 32}
HETZNER = {"PROVIDER": "hetzner", "HETZNER_API_TOKEN": "t", "PUBLIC_URL": "https://c.example.com"}


@pytest.mark.parametrize(
    ("env", "live"),
    [
        ({}, False),  # the one-machine demo: simulate-payment sends test-mode events
        (HETZNER, True),  # a real deployment without a key: live unless told otherwise
        ({**HETZNER, "STRIPE_LIVEMODE": "test"}, False),  # a staging deployment says so
        ({"STRIPE_SECRET_KEY": "sk_live_x"}, True),  # the key's mode decides
        ({"STRIPE_SECRET_KEY": "rk_live_x"}, True),
        ({**HETZNER, "STRIPE_SECRET_KEY": "sk_test_x"}, False),
        ({**HETZNER, "STRIPE_SECRET_KEY": "rk_test_x"}, False),
        ({"STRIPE_LIVEMODE": "live"}, True),
        ({"STRIPE_LIVEMODE": "live", "STRIPE_SECRET_KEY": "sk_live_x"}, True),
        ({"STRIPE_LIVEMODE": "test", "STRIPE_SECRET_KEY": "sk_test_x"}, False),
    ],
)
def test_livemode(env: dict[str, str], live: bool) -> None:
    assert Settings.from_env({**GOOD, **env}).stripe_livemode is live


@pytest.mark.parametrize(
    "env",
    [
        {"STRIPE_LIVEMODE": "yes"},
        {"STRIPE_LIVEMODE": "live", "STRIPE_SECRET_KEY": "sk_test_x"},
        {"STRIPE_LIVEMODE": "test", "STRIPE_SECRET_KEY": "rk_live_x"},
        {"STRIPE_ACCOUNT_ID": "acct_1\nacct_2"},
        {"STRIPE_ACCOUNT_ID": "cus_123"},
        {"STRIPE_ACCOUNT_ID": "acct_"},
    ],
)
def test_bad_mode_or_account_stops_start_up(env: dict[str, str]) -> None:
    name = next(iter(k for k in env if k != "STRIPE_SECRET_KEY"))
    with pytest.raises(SettingsError, match=name) as info:
        Settings.from_env({**GOOD, **env})
    assert "sk_" not in str(info.value) and "rk_" not in str(info.value)  # no secret echoed


def test_account() -> None:
    assert Settings.from_env({**GOOD, "STRIPE_ACCOUNT_ID": "acct_1Abc"}).stripe_account_id == (
        "acct_1Abc"
    )
    assert Settings.from_env(GOOD).stripe_account_id == ""


async def _deliver(plane: ControlPlane, event: dict[str, Any]) -> tuple[int, Any]:
    body = se.encode(event)
    async with plane.session.post(
        plane.url + "/v1/stripe/webhook", data=body, headers={"Stripe-Signature": se.sign(body)}
    ) as r:
        return r.status, await r.json()


async def test_a_live_deployment_refuses_test_events_and_stores_nothing(
    control_factory: Callable[..., ControlPlane],
) -> None:
    plane = control_factory(stripe_webhook_secret=se.WEBHOOK_SECRET, stripe_livemode=True)
    await plane.start()
    checkout = se.event("checkout.session.completed", se.checkout_session(client_reference_id="x"))
    status, body = await _deliver(plane, checkout)
    assert (status, body["error"]["code"]) == (400, "wrong_mode")
    live = {**se.event("checkout.session.completed", se.checkout_session()), "livemode": True}
    assert (await _deliver(plane, live))[0] == 200
    foreign = {**live, "id": se.new_id("evt"), "account": "acct_1Connected"}
    status, body = await _deliver(plane, foreign)
    assert (status, body["error"]["code"]) == (400, "wrong_account")
    assert plane.app is not None
    from control.appkeys import INBOX

    assert await plane.app[INBOX].counts() in (
        {"pending": 1, "failing": 0, "done": 0},
        {"pending": 0, "failing": 0, "done": 1},
    )
