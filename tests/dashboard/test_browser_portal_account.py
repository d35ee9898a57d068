"""A returning customer in a real browser (headless Chromium, Playwright), at phone and
laptop sizes: asks for a sign-in link, opens the mailed link (a real SMTP server got
it), lands on their page, sets an API key (never shown back) and reads what
cancelling means. No console error (a CSP violation is one), no request elsewhere.
Screenshots land in test-artifacts/dashboard/."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.conftest import LAPTOP, PHONE
from tests.dashboard.test_browser import tab
from tests.fakes.stripe_api import StripeFake, stripe_fake_fixture  # noqa: F401
from tests.fixtures import ControlPlane
from tests.portal_customers import Inbox, add_customer, link_in, portal_plane, smtp  # noqa: F401
from tests.test_protocol import registered

pytestmark = pytest.mark.browser
KEY = "sk-ant-browser-" + "k3y" * 10


@pytest.mark.parametrize(("size", "viewport"), [("phone", PHONE), ("laptop", LAPTOP)])
async def test_sign_in_by_mail_and_set_a_key(
    control_factory: Callable[..., ControlPlane],
    smtp: tuple[Inbox, int],  # noqa: F811
    stripe_fake: StripeFake,
    browser: Any,
    artifacts: Path,
    size: str,
    viewport: dict[str, int],
) -> None:
    from playwright.async_api import expect

    inbox, port = smtp
    plane = portal_plane(control_factory, port, stripe_fake)
    await plane.start()
    worker = await registered(plane)
    await add_customer(plane, "alice", "alice@example.com")
    async with tab(browser, plane, viewport) as opened:
        page = opened.page
        await page.goto("/portal/account")
        await expect(page).to_have_url(re.compile(r"/portal/signin$"))
        await page.fill("#email", "alice@example.com")
        await page.click("button[type=submit]")
        await expect(page.locator("#message")).to_contain_text("sign-in link is on its way")
        await page.screenshot(path=str(artifacts / f"portal-signin-{size}.png"), full_page=True)

        _, message = await inbox.next()
        url, token = link_in(message)
        await page.goto(f"{url}#{token}")
        await expect(page).to_have_url(re.compile(r"/portal/signin/link$"))  # fragment gone
        await page.click("#continue")
        await expect(page).to_have_url(re.compile(r"/portal/account$"))
        card = page.locator(".agent")
        await expect(card.locator(".name")).to_have_text("alice")
        await expect(card.locator(".url")).to_have_text("https://alice.clawfleet.localhost")
        await expect(page.locator("#cancel-words")).to_contain_text("30 days")

        before = await worker.assignments()
        await page.fill("#key-ANTHROPIC_API_KEY", KEY)
        await page.click(".settings button[type=submit]")
        await expect(page.locator("#message")).to_contain_text("restarting")
        await expect(page.locator("label[for=key-ANTHROPIC_API_KEY]")).to_contain_text("(set)")
        await expect(page.locator("#key-ANTHROPIC_API_KEY")).to_have_value("")
        assert KEY not in await page.content()
        await page.screenshot(path=str(artifacts / f"portal-account-{size}.png"), full_page=True)
        after = await worker.assignments()
        assert after.body["generation"] > before.body["generation"]  # restarted with it
        # The narrowest page scrolls nowhere sideways.
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= viewport["width"]
        assert opened.problems == []
