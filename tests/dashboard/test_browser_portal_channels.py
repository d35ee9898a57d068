"""The customer's page in a real browser (headless Chromium) at phone size: each setting
shows its label and hint from the tenant profile (OpenClaw: the model keys and the
Telegram bot token), the page says where the other settings are (the agent's own
Control UI), and a Telegram token pasted there restarts the agent with it and is never
shown back. Screenshot: test-artifacts/dashboard/portal-channels-phone.png."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.conftest import PHONE
from tests.dashboard.test_browser import tab
from tests.dashboard.test_browser_portal_account import ask_and_sign_in, with_alice
from tests.fakes.stripe_api import StripeFake, stripe_fake_fixture  # noqa: F401
from tests.fixtures import ControlPlane
from tests.portal_customers import Inbox, smtp  # noqa: F401 (smtp: a fixture)

pytestmark = pytest.mark.browser
TOKEN = "7712345678:AAH-browser-" + "b0t" * 10


async def test_telegram_token_with_its_words_on_a_phone(
    control_factory: Callable[..., ControlPlane],
    smtp: tuple[Inbox, int],  # noqa: F811
    stripe_fake: StripeFake,
    browser: Any,
    artifacts: Path,
) -> None:
    from playwright.async_api import expect

    plane, worker, inbox = await with_alice(control_factory, smtp, stripe_fake)
    async with tab(browser, plane, PHONE) as opened:
        page = opened.page
        await ask_and_sign_in(page, inbox)

        label = page.locator("label[for=key-TELEGRAM_BOT_TOKEN]")
        await expect(label).to_have_text("Telegram bot token (not set)")
        hint = page.locator("#hint-TELEGRAM_BOT_TOKEN")
        await expect(hint).to_contain_text("@BotFather")
        token = page.locator("#key-TELEGRAM_BOT_TOKEN")
        assert await token.get_attribute("aria-describedby") == "hint-TELEGRAM_BOT_TOKEN"
        await expect(page.locator("label[for=key-ANTHROPIC_API_KEY]")).to_contain_text(
            "Anthropic (Claude) API key"
        )
        await expect(page.locator(".agent .other-settings")).to_contain_text("Open my agent")

        before = await worker.assignments()
        await token.fill(TOKEN)
        await page.click(".settings button[type=submit]")
        await expect(page.locator("#message")).to_contain_text("restarting")
        await expect(label).to_have_text("Telegram bot token (set)")
        await expect(token).to_have_value("")
        assert TOKEN not in await page.content()
        await page.screenshot(path=str(artifacts / "portal-channels-phone.png"), full_page=True)
        after = await worker.assignments()
        assert after.body["generation"] > before.body["generation"]
        [spec] = after.body["containers"]
        assert spec["secret_files"][0]["content"] == f"TELEGRAM_BOT_TOKEN={TOKEN}\n"
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"]  # the hints wrap; nothing scrolls sideways
        assert opened.problems == []
