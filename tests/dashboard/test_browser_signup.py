"""The sign-up and status pages in a real browser (headless Debian Chromium driven by
Playwright), phone and laptop sizes, against the real control plane and the fake
Stripe API. Stripe's hosted page and the agent's address are answered by the test
(nothing leaves this machine); every console error, CSP violation included, fails.
Screenshots land in test-artifacts/dashboard/."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.conftest import LAPTOP, PHONE
from tests.fakes.stripe_api import StripeFake
from tests.fixtures import ControlPlane
from tests.portal_signup import HEALTHY, pay, portal_plane, status_path
from tests.test_protocol import registered

pytestmark = pytest.mark.browser
WAIT_MS = 20_000
HOSTED = "<!doctype html><title>Stripe Checkout</title><h1>Stripe Checkout (test)</h1>"


@contextlib.asynccontextmanager
async def opened(
    browser: Any, plane: ControlPlane, viewport: dict[str, int]
) -> AsyncIterator[tuple[Any, list[str]]]:
    from playwright.async_api import expect

    expect.set_options(timeout=WAIT_MS)
    context = await browser.new_context(viewport=viewport, base_url=plane.url)
    problems: list[str] = []

    async def elsewhere(route: Any) -> None:  # Stripe's page, the agent: not ours to load
        await route.fulfill(status=200, content_type="text/html", body=HOSTED)

    await context.route(re.compile(r"^https://"), elsewhere)
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    try:
        yield page, problems
    finally:
        await context.close()


async def choose_name(page: Any) -> None:
    from playwright.async_api import expect

    hint = page.locator("#availability")
    await page.fill("#subdomain", "my_agent")
    await expect(hint).to_have_text(re.compile("a DNS label"))
    await expect(hint).to_have_class(re.compile("bad"))
    await page.fill("#subdomain", "www")
    await expect(hint).to_have_text(re.compile("reserved"))
    await page.fill("#subdomain", "Alice")  # typed in capitals: the page lower-cases
    await expect(page.locator("#subdomain")).to_have_value("alice")
    await expect(hint).to_have_text("This address is free.")
    await expect(page.locator("#pay")).to_be_disabled()  # no e-mail yet
    await page.fill("#email", "alice@example.com")
    await expect(page.locator("#pay")).to_be_enabled()


@pytest.mark.parametrize("size", ["phone", "laptop"])
async def test_sign_up_pay_watch_and_open(
    control_factory: Callable[..., ControlPlane],
    stripe_fake: StripeFake,
    browser: Any,
    artifacts: Path,
    size: str,
) -> None:
    from playwright.async_api import expect

    plane = portal_plane(control_factory, stripe_fake)
    await plane.start()
    worker = await registered(plane)
    viewport = PHONE if size == "phone" else LAPTOP
    async with opened(browser, plane, viewport) as (page, problems):
        await page.goto("/portal/signup")
        await expect(page.locator("#domain")).to_have_text(f".{plane.settings.base_domain}")
        await expect(page.locator("input[name=plan][value=pro]")).to_be_checked()
        await choose_name(page)
        await page.screenshot(path=str(artifacts / f"portal-signup-{size}.png"), full_page=True)
        await page.click("#pay")
        await expect(page).to_have_url(re.compile(r"^https://checkout\.stripe\.com/c/pay/cs_test_"))
        session_id = page.url.split("#")[0].rsplit("/", 1)[-1]
        status = status_path(stripe_fake, session_id)
        await page.goto(status)  # as Stripe's redirect would, before its webhook arrives
        await expect(page.locator("#message")).to_have_text(re.compile("Waiting for Stripe"))
        await pay(plane, stripe_fake, session_id)
        await expect(page.locator("li[data-step=starting]")).to_have_class("current")
        await expect(page.locator("li[data-step=payment]")).to_have_class("done")
        await expect(page.locator("#open")).to_be_hidden()
        user_id = stripe_fake.checkout.requests[session_id]["client_reference_id"]
        await worker.heartbeat([{"user_id": user_id, **HEALTHY}])
        await expect(page.locator("#message")).to_have_text("Your agent is ready.")
        await expect(page.locator("#open")).to_be_visible()
        await page.screenshot(path=str(artifacts / f"portal-status-{size}.png"), full_page=True)
        await page.click("#open")
        agent = re.escape(f"https://alice.{plane.settings.base_domain}/_clawfleet/signin?ticket=")
        await expect(page).to_have_url(re.compile(f"^{agent}"))
        await page.goto(status)  # closed and opened again later: the same page
        await expect(page.locator("#open")).to_be_visible()
        assert problems == []


async def test_coming_back_from_checkout_fills_the_form_again(
    control_factory: Callable[..., ControlPlane],
    stripe_fake: StripeFake,
    browser: Any,
) -> None:
    from playwright.async_api import expect

    plane = portal_plane(control_factory, stripe_fake)
    await plane.start()
    async with opened(browser, plane, PHONE) as (page, problems):
        await page.goto("/portal/signup")
        await choose_name(page)
        await page.click("#pay")
        await expect(page).to_have_url(re.compile(r"^https://checkout\.stripe\.com/"))
        session_id = page.url.split("#")[0].rsplit("/", 1)[-1]
        await page.goto(stripe_fake.checkout.requests[session_id]["cancel_url"])
        await expect(page.locator("#error")).to_have_text(re.compile("Nothing was charged"))
        await expect(page).to_have_url(re.compile(r"/portal/signup$"))  # token dropped
        await expect(page.locator("#subdomain")).to_have_value("alice")
        await expect(page.locator("#email")).to_have_value("alice@example.com")
        await expect(page.locator("#availability")).to_have_text("This address is free.")
        assert stripe_fake.checkout.sessions[session_id]["status"] == "expired"
        assert problems == []
