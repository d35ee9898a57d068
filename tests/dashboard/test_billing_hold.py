"""The dashboard shows both sources of a user's state, billing's verdict and the
operator's hold, and offers Resume exactly while a hold is in force (real Chromium)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.conftest import LAPTOP
from tests.dashboard.test_browser import sign_in, tab
from tests.fixtures import ControlPlane

pytestmark = pytest.mark.browser


async def test_a_held_user_shows_its_hold_and_only_resume_lifts_it(
    control: ControlPlane, browser: Any, artifacts: Path
) -> None:
    from playwright.async_api import expect

    await control.admin("POST", "/v1/users", {"user_id": "hal", "subdomain": "hal"})
    async with tab(browser, control, LAPTOP) as t:
        await sign_in(t.page, control)
        t.page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await t.page.goto("/dashboard/users")
        row = t.page.locator('#users tr[data-user-id="hal"]')
        await expect(row.locator(".user-billing")).to_have_text("billing: none (run)")
        await expect(row.locator(".user-hold")).to_have_count(0)
        await expect(row.locator(".act-resume")).to_have_count(0)
        await row.locator(".act-suspend").click()
        await expect(row.locator(".user-hold")).to_have_text("operator hold: suspended")
        await expect(row.locator(".act-suspend")).to_have_count(0)
        await t.page.screenshot(path=str(artifacts / "users-hold.png"), full_page=True)
        await row.locator(".act-resume").click()
        await expect(row.locator(".user-hold")).to_have_count(0)
        await expect(row.locator(".user-state")).not_to_have_text(re.compile("suspended"))
        _, hal = await control.admin("GET", "/v1/users/hal")
        assert hal["hold"] is None
        assert t.problems == []
