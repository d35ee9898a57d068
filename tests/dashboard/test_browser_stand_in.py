"""The local Checkout stand-in's page (control/portal/static/stand_in.js) in a real browser:
a request for the order that fails on the way is asked again before the buyer is told
to reload (a CI run once met such a failure and left the page empty)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from control.settings import profiles
from tests import stripe_events as se
from tests.dashboard.conftest import LAPTOP
from tests.fixtures import ControlPlane

pytestmark = pytest.mark.browser
ORDER_API = re.compile(r"/portal/api/stand-in/checkout/cs_test_standin_[^/]+$")


@pytest.mark.parametrize(("failures", "shown"), [(2, "order"), (3, "reload")])
async def test_the_order_is_asked_again_when_its_request_fails_on_the_way(
    control_factory: Callable[..., ControlPlane], browser: Any, failures: int, shown: str
) -> None:
    from playwright.async_api import expect

    plane = control_factory(  # `make run`'s shape: no Stripe key, so the stand-in
        stripe_webhook_secret=se.WEBHOOK_SECRET, tenant_profile=profiles.load("openclaw")
    )
    await plane.start()
    context = await browser.new_context(viewport=LAPTOP, base_url=plane.url)
    asked: list[str] = []

    async def flaky(route: Any) -> None:
        asked.append(route.request.url)
        if len(asked) <= failures:
            await route.abort("connectionreset")
        else:
            await route.continue_()

    try:
        await context.route(ORDER_API, flaky)
        page = await context.new_page()
        await page.goto("/portal/signup")
        await page.fill("#subdomain", "alice")
        await expect(page.locator("#availability")).to_have_text("This address is free.")
        await page.fill("#email", "alice@example.com")
        await page.click("#pay")
        await expect(page).to_have_url(re.compile(r"/portal/stand-in/checkout/cs_test_standin_"))
        if shown == "order":
            await expect(page.locator("#order-subdomain")).to_have_text("alice")
            await expect(page.locator("#pay")).to_be_visible()
            assert len(asked) == failures + 1
        else:  # three failures: the two retries are spent
            await expect(page.locator("#message")).to_have_text(
                "The order could not be loaded: reload the page."
            )
            assert len(asked) == 3
    finally:
        await context.close()
