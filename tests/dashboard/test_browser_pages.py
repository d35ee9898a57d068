"""The dashboard's tables page through the API's cursors, and its headline numbers
come from the summary (issue 16), in a real browser.

The fleet is bigger than a page (50 rows): 55 users made through the API, and 55
servers written into the database as registration and a first heartbeat leave them
(registering 55 workers through the API would only be slower), cordoned, so that the
pending user stays pending. Every wait is bounded by Playwright.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from typing import Any

import pytest

from tests.dashboard.conftest import LAPTOP
from tests.dashboard.test_browser import add_users, sign_in, tab
from tests.fixtures import ControlPlane

pytestmark = pytest.mark.browser
PAGE = 50  # dashboard.js PAGE


def insert_servers(control: ControlPlane, n: int) -> list[str]:
    ids = [f"srv-page{i:03d}" for i in range(n)]
    now = time.time()
    with sqlite3.connect(control.settings.database_path, timeout=10) as db:
        db.executemany(
            "INSERT INTO servers (id, name, status, origin, created_at, status_changed_at, "
            "last_heartbeat, heartbeat_interval, cordoned, memory_mb, cpus) "
            "VALUES (?, ?, 'active', 'join', ?, ?, ?, 5, 1, 8192, 4)",
            [(i, i, now, now, now) for i in ids],
        )
    return ids


async def test_the_users_table_shows_page_two_and_back(control: ControlPlane, browser: Any) -> None:
    from playwright.async_api import expect

    names = [f"user{i:02d}" for i in range(PAGE + 5)]
    await add_users(control, *names)
    async with tab(browser, control, LAPTOP) as t:
        await sign_in(t.page, control)
        await t.page.goto("/dashboard/users")
        rows = t.page.locator("#users tbody tr[data-user-id]")
        await expect(rows).to_have_count(PAGE)
        await expect(rows.first).to_have_attribute("data-user-id", names[0])
        await expect(t.page.locator("#users-pager .page-prev")).to_be_disabled()
        await t.page.click("#users-pager .page-next")
        await expect(rows).to_have_count(5)
        await expect(rows.first).to_have_attribute("data-user-id", names[PAGE])
        await expect(t.page.locator("#users-pager .page-number")).to_have_text("page 2")
        await expect(t.page.locator("#users-pager .page-next")).to_be_disabled()
        await expect(t.page.locator("#user-count")).to_contain_text(f"{len(names)} users in all")
        # A later poll keeps page 2, and a user added meanwhile lands there, at its place.
        await add_users(control, "user99")
        await expect(rows).to_have_count(6)
        await expect(rows.last).to_have_attribute("data-user-id", "user99")
        await t.page.click("#users-pager .page-prev")
        await expect(rows).to_have_count(PAGE)
        await expect(rows.first).to_have_attribute("data-user-id", names[0])
        # A search for an id finds the user on whatever page it is.
        await t.page.fill("#user-search", "user99")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_have_attribute("data-user-id", "user99")
        assert t.problems == []


async def test_the_fleet_page_pages_servers_and_counts_them_all(
    control: ControlPlane, browser: Any
) -> None:
    from playwright.async_api import expect

    ids = await asyncio.to_thread(insert_servers, control, PAGE + 3)
    await add_users(control, "waiting")
    async with tab(browser, control, LAPTOP) as t:
        await sign_in(t.page, control)
        rows = t.page.locator("#servers tbody tr[data-server-id]")
        await expect(rows).to_have_count(PAGE)
        # The summary counts every server and user, not the page's.
        await expect(t.page.locator("#total-servers .value")).to_have_text(str(len(ids)))
        await expect(t.page.locator("#total-memory .value")).to_have_text(
            re.compile(r"/ 397\.5 GB$")  # 53 x (8192 - 512) MB
        )
        await expect(t.page.locator("#total-pending .value")).to_have_text("1")
        await t.page.click("#servers-pager .page-next")
        await expect(rows).to_have_count(3)
        await expect(rows.first).to_have_attribute("data-server-id", ids[PAGE])
        await expect(t.page.locator("#servers-pager .page-number")).to_have_text("page 2")
        assert t.problems == []
