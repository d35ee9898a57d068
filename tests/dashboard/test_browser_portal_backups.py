"""The customer's Backups section in a real browser (headless Chromium, Playwright), at
phone and laptop sizes: a snapshot made as the agent makes it (real restic, real S3
server) is listed, its Download link saves a tar of exactly those files; with backups
off there is no section. No console error (a CSP violation is one), no request
elsewhere. Screenshots land in test-artifacts/dashboard/."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from control.portal.customer_sessions import COOKIE_NAME
from tests.backup_state import make_state
from tests.dashboard.conftest import LAPTOP, PHONE
from tests.dashboard.test_browser import tab
from tests.fakes.stripe_api import StripeFake, stripe_fake_fixture  # noqa: F401
from tests.portal_customers import Inbox, sign_in, smtp  # noqa: F401
from tests.test_portal_backup_download import (  # noqa: F401
    inbox,
    make_plane,
    s3,
    snapshot,
    tree,
    untarred,
)
from tests.test_portal_backup_download import (
    pytestmark as needs_restic,
)

pytestmark = [pytest.mark.browser, needs_restic]


@pytest.mark.parametrize(("size", "viewport"), [("phone", PHONE), ("laptop", LAPTOP)])
async def test_she_downloads_a_backup_from_her_page(
    make_plane: Callable[..., Any],  # noqa: F811
    inbox: Inbox,  # noqa: F811
    browser: Any,
    artifacts: Path,
    tmp_path: Path,
    size: str,
    viewport: dict[str, int],
) -> None:
    from playwright.async_api import expect

    plane = await make_plane()
    state = tmp_path / "state"
    make_state(state, 200 * 1024)
    made = await snapshot(plane, "alice", state)
    alice = await sign_in(plane, inbox, "alice@example.com")
    async with tab(browser, plane, viewport) as opened:
        cookie = {"name": COOKIE_NAME, "value": alice.session_id, "url": plane.url + "/portal"}
        await opened.context.add_cookies([cookie])
        page = opened.page
        await page.goto("/portal/account")
        section = page.locator(".agent .backups")
        await expect(section).to_be_visible()
        item = section.locator(".snapshots li")
        await expect(item).to_have_count(1)
        await expect(item).to_contain_text(re.compile(r"\d+(\.\d)? [KM]B new"))
        await page.screenshot(path=str(artifacts / f"portal-backups-{size}.png"), full_page=True)
        async with page.expect_download() as started:
            await item.locator("a").click()
        download = await started.value
        assert download.suggested_filename.endswith(f"-{made.snapshot_id}.tar")
        saved = tmp_path / "saved.tar"
        await download.save_as(saved)
        assert untarred(saved.read_bytes(), tmp_path / "got") == tree(state)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= viewport["width"]
        assert opened.problems == []


async def test_no_backups_section_where_backups_are_off(
    make_plane: Callable[..., Any],  # noqa: F811
    inbox: Inbox,  # noqa: F811
    browser: Any,
) -> None:
    from playwright.async_api import expect

    plane = await make_plane(backups=False)
    alice = await sign_in(plane, inbox, "alice@example.com")
    async with tab(browser, plane, LAPTOP) as opened:
        cookie = {"name": COOKIE_NAME, "value": alice.session_id, "url": plane.url + "/portal"}
        await opened.context.add_cookies([cookie])
        page = opened.page
        await page.goto("/portal/account")
        await expect(page.locator(".agent .name")).to_have_text("alice")
        await expect(page.locator(".agent .settings")).to_be_visible()  # the card is complete
        await expect(page.locator(".agent .backups")).to_be_hidden()
        assert opened.problems == []
