"""The operator's brand and the plan cards in a real browser (headless Chromium driven
by Playwright), phone and laptop sizes, against the real control plane and the fake
Stripe API: the product's name in the title and header, the logo (a local SVG file, or
an https URL the CSP must let through) actually drawn, the accent colour on the
buttons, the support address, and the plan card's name and price from Stripe. Any
console error, a CSP violation included, fails. Screenshots in test-artifacts/dashboard/."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import stripe_events as se
from tests.dashboard.conftest import LAPTOP, PHONE
from tests.dashboard.test_browser_signup import opened
from tests.fakes.stripe_api import StripeFake
from tests.fixtures import ControlPlane
from tests.portal_signup import portal_plane

pytestmark = pytest.mark.browser
NAME = "Tom's & Co"
SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="64" height="32">'
    '<rect width="64" height="32" fill="#c0ffee"/></svg>'
)
EXTERNAL_LOGO = "https://cdn.example.com/brand/logo.svg"


async def logo_drawn(page: Any) -> None:
    """Waits (bounded by the page's timeout) until the header's logo has loaded and has
    a size: an image that failed, was blocked by the CSP or is still coming never does."""
    await page.wait_for_function(
        "() => { const i = document.querySelector('.brand-logo');"
        " return i !== null && i.complete && i.naturalWidth > 0; }"
    )


@pytest.mark.parametrize("size", ["phone", "laptop"])
async def test_the_brand_and_plan_cards_show(
    control_factory: Callable[..., ControlPlane],
    stripe_fake: StripeFake,
    browser: Any,
    artifacts: Path,
    tmp_path: Path,
    size: str,
) -> None:
    from playwright.async_api import expect

    logo = tmp_path / "logo.svg"
    logo.write_text(SVG)
    stripe_fake.prices.add(se.PRICE, 1900, "eur", "Pro agent")
    plane = portal_plane(
        control_factory,
        stripe_fake,
        portal_product_name=NAME,
        portal_logo=str(logo),
        portal_accent_color="#c0ffee",
        support_email="help@example.com",
    )
    await plane.start()
    async with opened(browser, plane, PHONE if size == "phone" else LAPTOP) as (page, problems):
        await page.goto("/portal/signup")
        await expect(page).to_have_title(f"Get your agent · {NAME}")
        await expect(page.locator(".brand-name")).to_have_text(NAME)
        card = page.locator("label.plan")
        await expect(card.locator("strong")).to_have_text("Pro agent")
        await expect(card.locator(".price")).to_have_text("€19.00 a month")
        await expect(card.locator(".size")).to_have_text("2 GB memory · 1 CPU · 20 GB storage")
        await expect(page.locator(".support a")).to_have_attribute(
            "href", "mailto:help@example.com"
        )
        await expect(page.locator("#pay")).to_have_css("background-color", "rgb(192, 255, 238)")
        await expect(page.locator("#pay")).to_have_css("color", "rgb(0, 0, 0)")
        await logo_drawn(page)
        await page.screenshot(path=str(artifacts / f"portal-brand-{size}.png"), full_page=True)
        await page.goto("/portal/signin")
        await expect(page).to_have_title(f"Sign in · {NAME}")
        await expect(page.locator("button[type=submit]")).to_have_css(
            "background-color", "rgb(192, 255, 238)"
        )
        await logo_drawn(page)
        assert problems == []


async def test_an_external_logo_passes_the_csp(
    control_factory: Callable[..., ControlPlane], stripe_fake: StripeFake, browser: Any
) -> None:
    from playwright.async_api import expect

    plane = portal_plane(control_factory, stripe_fake, portal_logo=EXTERNAL_LOGO)
    await plane.start()
    async with opened(browser, plane, LAPTOP) as (page, problems):

        async def cdn(route: Any) -> None:  # the operator's CDN, answered here
            await route.fulfill(status=200, content_type="image/svg+xml", body=SVG)

        await page.route(EXTERNAL_LOGO, cdn)
        await page.goto("/portal/signup")
        await expect(page.locator(".brand-name")).to_have_text("Agent Hosting")
        await expect(page.locator(".brand-logo")).to_have_attribute("src", EXTERNAL_LOGO)
        await logo_drawn(page)
        assert problems == []  # a CSP refusal would be a console error
