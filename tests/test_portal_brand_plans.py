"""The sign-up page's plan cards for buyers (control/portal/plan_prices.py): a display
name and a price in words from the plan's Stripe Price, read through the real `stripe`
library from the fake Stripe API and cached; the stand-in's demo price; the words."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from control.billing.simulated import Purchase, purchase_events
from control.plans import DEFAULT_PLAN, Plan
from control.portal.plan_prices import DEMO, Price, plan_words, price_words
from tests import stripe_events as se
from tests.fakes.stripe_api import StripeFake
from tests.fixtures import ControlPlane
from tests.portal_signup import PRO, call, portal_plane

TEAM = Plan("team-max", 4096, 2.0, 2048, 40, ("price_team_quarterly",))
PRICES = "/v1/prices/"


@pytest.mark.parametrize(
    ("price", "words"),
    [
        (Price(2000, "usd", "month"), "$20.00 a month"),
        (Price(950, "EUR", "month", 3), "€9.50 every 3 months"),
        (Price(123456, "gbp", "year"), "£1,234.56 a year"),
        (Price(500, "jpy", "month"), "¥500 a month"),
        (Price(1500, "chf", "month"), "15.00 CHF a month"),
        (Price(4900, "usd", None), "$49.00 once"),
        (Price(None, "usd", "month"), None),  # tiered or metered: no fixed amount
    ],
)
def test_price_words(price: Price, words: str | None) -> None:
    assert price_words(price) == words


@pytest.mark.parametrize(
    ("name", "words"), [("default", "Default"), ("pro-max", "Pro max"), ("a_b", "A b")]
)
def test_plan_words(name: str, words: str) -> None:
    assert plan_words(name) == words


async def _plans(plane: ControlPlane) -> list[dict[str, Any]]:
    reply = await call(plane, "GET", "/portal/api/plans")
    assert reply.status == 200, reply.body
    return list(reply.body["plans"])


async def test_cards_show_stripes_names_and_prices_and_ask_once(
    control_factory: Callable[..., ControlPlane], stripe_fake: StripeFake
) -> None:
    stripe_fake.prices.add(se.PRICE, 1900, "eur", "Pro agent")
    stripe_fake.prices.add(TEAM.stripe_price_ids[0], 9900, "usd", "Team", "month", 3)
    plane = portal_plane(
        control_factory, stripe_fake, plans={"default": DEFAULT_PLAN, "pro": PRO, "team-max": TEAM}
    )
    await plane.start()
    cards = {p["name"]: (p["display_name"], p["price"], p["demo"]) for p in await _plans(plane)}
    assert cards == {
        "pro": ("Pro agent", "€19.00 a month", False),
        "team-max": ("Team", "$99.00 every 3 months", False),
    }
    before = sum(stripe_fake.count(PRICES + p) for p in (se.PRICE, TEAM.stripe_price_ids[0]))
    assert before == 2
    await _plans(plane)  # cached: no second call to Stripe per page load
    after = sum(stripe_fake.count(PRICES + p) for p in (se.PRICE, TEAM.stripe_price_ids[0]))
    assert after == 2


async def test_a_price_stripe_cannot_give_still_lists_the_plan(
    control_factory: Callable[..., ControlPlane],
    stripe_fake: StripeFake,
    caplog: pytest.LogCaptureFixture,
) -> None:
    plane = portal_plane(control_factory, stripe_fake)  # the fake knows no such price
    await plane.start()
    (card,) = await _plans(plane)
    assert (card["name"], card["display_name"], card["price"], card["demo"]) == (
        "pro",
        "Pro",
        None,
        False,
    )
    assert any("could not be read: 404 resource_missing" in r.getMessage() for r in caplog.records)
    assert all(stripe_fake.api_key not in r.getMessage() for r in caplog.records)


async def test_the_stand_in_shows_its_demo_price(
    control_factory: Callable[..., ControlPlane],
) -> None:
    plane = control_factory(
        stripe_webhook_secret=se.WEBHOOK_SECRET,
        stripe_secret_key="",
        plans={"default": DEFAULT_PLAN, "pro": PRO},
    )
    await plane.start()
    cards = {p["name"]: (p["display_name"], p["price"], p["demo"]) for p in await _plans(plane)}
    assert cards == {
        "default": ("Default", "$20.00 a month", True),
        "pro": ("Pro", "$20.00 a month", True),
    }


def test_the_demo_price_is_what_the_stand_in_charges() -> None:
    purchase = Purchase("u-1", "u", "default", "price_x", "u@example.com")
    (_, created) = purchase_events(purchase, 1_700_000_000)
    item = created["data"]["object"]["items"]["data"][0]["price"]
    assert (item["unit_amount"], item["currency"]) == (DEMO.unit_amount, DEMO.currency)
    assert item["recurring"]["interval"] == DEMO.interval
