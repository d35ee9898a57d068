"""The dashboard in a real browser (headless Debian Chromium driven by Playwright).

Every wait is bounded (Playwright's expect timeouts); nothing asserts how fast a
thing happens, only that it does. Screenshots land in test-artifacts/dashboard/.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from control.capacity.providers.base import Provider, ServerType
from control.capacity.providers.local import LocalProvider
from control.settings import Settings
from tests.dashboard.conftest import LAPTOP, PHONE
from tests.fixtures import ControlPlane
from tests.test_protocol import registered
from tests.worker import FakeWorker

pytestmark = pytest.mark.browser
WAIT_MS = 20_000
LATE = re.compile(r"\blate\b")


@dataclass
class Tab:
    page: Any
    context: Any
    problems: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def tab(browser: Any, control: ControlPlane, viewport: dict[str, int]) -> AsyncIterator[Tab]:
    from playwright.async_api import expect

    expect.set_options(timeout=WAIT_MS)
    context = await browser.new_context(viewport=viewport, base_url=control.url)
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    opened = Tab(page, context)

    def on_console(message: Any) -> None:
        if message.type == "error" and "401" not in message.text:
            opened.problems.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: opened.problems.append(f"page error: {exc}"))
    page.on(
        "request",
        lambda req: (
            None
            if req.url.startswith(control.url)
            else opened.problems.append(f"external request: {req.url}")
        ),
    )
    try:
        yield opened
    finally:
        await context.close()


async def sign_in(page: Any, control: ControlPlane, token: str | None = None) -> None:
    from playwright.async_api import expect

    await page.goto("/dashboard")
    await expect(page).to_have_url(re.compile(r"/dashboard/login\?next=/dashboard$"))
    await page.fill("#token", token or control.admin_token)
    await page.click("button[type=submit]")
    if token is None:
        await expect(page).to_have_url(re.compile(r"/dashboard$"))
        await expect(page.locator("#live")).to_have_text(re.compile("updated"))


def report(
    *user_ids: str, state: str = "running", error: str | None = None
) -> list[dict[str, Any]]:
    return [
        {
            "user_id": uid,
            "state": state,
            "health": "healthy" if state == "running" else "unhealthy",
            "image_id": "sha256:4f1c9a0d2e7b" + "0" * 52,
            "started_at": "2026-11-20T10:00:00Z",
            "restart_count": 0 if error is None else 3,
            "error": error,
        }
        for uid in user_ids
    ]


async def user_ids_on(control: ControlPlane, server_id: str) -> list[str]:
    _, listing = await control.admin("GET", "/v1/users")
    return [u["user_id"] for u in listing["users"] if u["server_id"] == server_id]


async def add_users(control: ControlPlane, *names: str) -> None:
    for name in names:
        status, body = await control.admin(
            "POST", "/v1/users", {"user_id": name, "subdomain": name}
        )
        assert status == 201, body


async def populate(control: ControlPlane) -> tuple[FakeWorker, FakeWorker]:
    """Two workers: alice, bob and carol run on a; dave runs and erin crashed on b."""
    a = await registered(control, "worker-a")
    await add_users(control, "alice", "bob", "carol")
    assert (await control.admin("POST", f"/v1/servers/{a.key_id}/cordon"))[0] == 200
    b = await registered(control, "worker-b")
    await add_users(control, "dave", "erin")
    assert (await control.admin("POST", f"/v1/servers/{a.key_id}/uncordon"))[0] == 200
    assert await user_ids_on(control, b.key_id) == ["dave", "erin"]
    await a.heartbeat(report(*await user_ids_on(control, a.key_id)))
    b_users = await user_ids_on(control, b.key_id)
    await b.heartbeat(report(*b_users[:-1]) + report(*b_users[-1:], state="exited", error="OOM"))
    return a, b


async def keep_heartbeating(worker: FakeWorker, every: float = 0.5) -> None:
    while True:
        await worker.heartbeat()
        await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def heartbeats(worker: FakeWorker) -> AsyncIterator[None]:
    task = asyncio.create_task(keep_heartbeating(worker))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_heartbeat_age_ticks_and_turns_red_when_late(
    control_factory: Callable[..., ControlPlane], browser: Any, artifacts: Path
) -> None:
    from playwright.async_api import expect

    control = control_factory(heartbeat_interval=1.0, dead_after=120.0)
    await control.start()
    worker = await registered(control, "hb-worker")
    assert (await worker.heartbeat()).status == 200
    async with tab(browser, control, LAPTOP) as t:
        await sign_in(t.page, control)
        row = t.page.locator(f'#servers tr[data-server-id="{worker.key_id}"]')
        age = row.locator(".age")
        await expect(age).to_have_attribute("data-seconds", re.compile(r"^\d+$"))
        first = await age.text_content()
        await expect(age).not_to_have_text(first or "")  # the age moves between polls
        await expect(age).to_have_class(LATE)  # > 3 x heartbeat_interval (about 1 s)
        await expect(row.locator(".badge").first).to_have_text("unhealthy")
        await t.page.screenshot(path=str(artifacts / "fleet-late-laptop.png"), full_page=True)
        async with heartbeats(worker):
            await expect(age).not_to_have_class(LATE)
            await expect(row.locator(".badge").first).to_have_text("active")
        assert t.problems == []


class PricedLocal(LocalProvider):
    """The local provider, but a server type has a price (as Hetzner's do)."""

    def server_type(self, name: str) -> ServerType:
        return ServerType(name=name, cpus=4, memory_mb=8192, disk_gb=80, hourly_price=0.0123)


def priced_local(settings: Settings) -> Provider:
    return PricedLocal(settings.local_workers_dir)


async def test_fleet_page_shows_servers_totals_and_pending_users(
    control_factory: Callable[..., ControlPlane], browser: Any, artifacts: Path
) -> None:
    from playwright.async_api import expect

    control = control_factory(priced_local)
    await control.start()
    a, b = await populate(control)
    with sqlite3.connect(control.settings.database_path) as db:  # as the autoscaler records it
        db.execute(
            "UPDATE servers SET server_type = 'cpx22', location = 'nbg1', public_ip = '203.0.113.7' "
            "WHERE id = ?",
            (a.key_id,),
        )
    await add_users(control, *(f"p{i}" for i in range(12)))  # more than both hold
    _, listing = await control.admin("GET", "/v1/users")
    pending = [u["user_id"] for u in listing["users"] if u["state"] == "pending"]
    assert pending
    _, servers = await control.admin("GET", "/v1/servers")
    used = {s["id"]: s["capacity"]["memory_mb"] for s in servers["servers"]}
    async with tab(browser, control, LAPTOP) as t:
        await sign_in(t.page, control)
        for worker, name in ((a, "worker-a"), (b, "worker-b")):
            row = t.page.locator(f'#servers tr[data-server-id="{worker.key_id}"]')
            await expect(row).to_contain_text("active")
            await expect(row.locator("[data-label=Memory]")).to_contain_text(
                f"{used[worker.key_id]['used'] // 1024} GB / 7.5 GB"
            )
            await expect(row).to_contain_text(name)
            await expect(row.locator(".containers")).to_have_text(re.compile(r"^\d+ / \d+$"))
        await expect(t.page.locator("#total-servers .value")).to_have_text("2")
        await expect(t.page.locator("#total-pending .value")).to_have_text(str(len(pending)))
        cost = t.page.locator("#total-cost")
        await expect(cost.locator(".value")).to_have_text("0.0123 /h")
        await expect(cost).to_contain_text("≈ 8.98 /month")  # 0.0123 x 730
        await expect(cost).to_contain_text("1 server(s) without a price")
        row_a = t.page.locator(f'#servers tr[data-server-id="{a.key_id}"]')
        await expect(row_a.locator("[data-label='Type · location']")).to_contain_text(
            "cpx22 · nbg1"
        )
        await expect(row_a.locator("[data-label='Public IP']")).to_have_text("203.0.113.7")
        await expect(t.page.locator("#pending")).to_contain_text(pending[0])
        await t.page.screenshot(path=str(artifacts / "fleet-laptop.png"), full_page=True)
        assert t.problems == []
    async with tab(browser, control, PHONE) as t:
        await sign_in(t.page, control)
        await expect(t.page.locator(f'#servers tr[data-server-id="{a.key_id}"]')).to_be_visible()
        width = await t.page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"]  # no sideways scrolling on a phone
        await t.page.screenshot(path=str(artifacts / "fleet-phone.png"), full_page=True)
        assert t.problems == []


async def test_suspend_then_resume_a_user(
    control: ControlPlane, browser: Any, artifacts: Path
) -> None:
    from playwright.async_api import expect

    await populate(control)
    async with tab(browser, control, LAPTOP) as t:
        await sign_in(t.page, control)
        t.page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await t.page.click("nav >> text=Users")
        await expect(t.page).to_have_url(re.compile(r"/dashboard/users$"))
        row = t.page.locator('#users tr[data-user-id="alice"]')
        await expect(row.locator(".user-state")).to_have_text("running")
        await expect(row.locator("a[href='https://alice.clawfleet.localhost']")).to_be_visible()
        await row.locator(".act-suspend").click()
        await expect(row.locator(".user-state")).to_have_text("suspended")
        _, alice = await control.admin("GET", "/v1/users/alice")
        assert alice["state"] == "suspended"
        await t.page.screenshot(path=str(artifacts / "users-laptop.png"), full_page=True)
        await row.locator(".act-resume").click()
        await expect(row.locator(".user-state")).not_to_have_text("suspended")
        _, alice = await control.admin("GET", "/v1/users/alice")
        assert alice["state"] in ("provisioning", "running")
        await expect(row.locator(".user-state")).to_have_text(alice["state"])
        assert t.problems == []


async def test_access_token_shows_only_on_request_and_search_filters(
    control: ControlPlane, browser: Any, artifacts: Path
) -> None:
    from playwright.async_api import expect

    await populate(control)
    _, access = await control.admin("GET", "/v1/users/bob/access")
    async with tab(browser, control, PHONE) as t:
        await sign_in(t.page, control)
        await t.page.goto("/dashboard/users")
        await expect(t.page.locator("#users tbody tr[data-user-id]")).to_have_count(5)
        assert access["token"] not in await t.page.content()
        await t.page.fill("#user-search", "bob")
        await expect(t.page.locator("#users tbody tr[data-user-id]")).to_have_count(1)
        await expect(t.page).to_have_url(re.compile(r"/dashboard/users\?q=bob$"))
        row = t.page.locator('#users tr[data-user-id="bob"]')
        await row.locator(".act-access").click()
        token = t.page.locator('tr[data-panel-for="bob"] .access-token')
        await expect(token).to_have_text(access["token"])
        width = await t.page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"]  # the long token wraps instead of widening the page
        await t.page.screenshot(path=str(artifacts / "users-access-phone.png"), full_page=True)
        await t.page.locator('tr[data-panel-for="bob"] >> text=Hide').click()
        await expect(token).to_have_count(0)
        assert access["token"] not in await t.page.content()
        assert t.problems == []


async def test_server_page_lists_containers_and_cordons(
    control: ControlPlane, browser: Any, artifacts: Path
) -> None:
    from playwright.async_api import expect

    _a, b = await populate(control)
    crashed = (await user_ids_on(control, b.key_id))[-1]
    async with tab(browser, control, LAPTOP) as t:
        await sign_in(t.page, control)
        await t.page.locator(f'#servers tr[data-server-id="{b.key_id}"] a').first.click()
        await expect(t.page).to_have_url(re.compile(f"/dashboard/servers/{b.key_id}$"))
        crashed_row = t.page.locator(f'#containers tr[data-user-id="{crashed}"]')
        await expect(crashed_row.locator("[data-label=State]")).to_have_text("exited")
        await expect(crashed_row.locator("[data-label='Last error']")).to_have_text("OOM")
        await expect(crashed_row.locator("[data-label=Restarts]")).to_have_text("3")
        await expect(crashed_row.locator("[data-label=Image]")).to_have_text("4f1c9a0d2e7b")
        # Joined by hand (a join token): outside the edge firewall, and the page says so.
        await expect(t.page.locator("#server-detail")).to_contain_text("UNPROTECTED")
        await t.page.click("#action-cordon")
        await expect(t.page.locator("#server-detail")).to_contain_text("cordoned")
        await expect(t.page.locator("#action-uncordon")).to_be_enabled()
        _, srv = await control.admin("GET", f"/v1/servers/{b.key_id}")
        assert srv["cordoned"] is True
        await t.page.screenshot(path=str(artifacts / "server-laptop.png"), full_page=True)
        await t.page.click("#action-uncordon")
        await expect(t.page.locator("#action-cordon")).to_be_enabled()
        _, srv = await control.admin("GET", f"/v1/servers/{b.key_id}")
        assert srv["cordoned"] is False
        # The decisions show up on the events page, newest first.
        await t.page.click("nav >> text=Events")
        events = t.page.locator("#events tbody tr[data-event-id]")
        await expect(events.first).to_contain_text("server_uncordon")
        await expect(t.page.locator("#events")).to_contain_text("server_cordon")
        await t.page.screenshot(path=str(artifacts / "events-laptop.png"), full_page=True)
        assert t.problems == []


async def test_move_a_user_to_another_server(control: ControlPlane, browser: Any) -> None:
    from playwright.async_api import expect

    a, b = await populate(control)
    mover = (await user_ids_on(control, a.key_id))[0]
    async with tab(browser, control, LAPTOP) as t:
        await sign_in(t.page, control)
        await t.page.goto("/dashboard/users")
        row = t.page.locator(f'#users tr[data-user-id="{mover}"]')
        await row.locator(".act-move").click()
        panel = t.page.locator(f'tr[data-panel-for="{mover}"]')
        await panel.locator("select").select_option(b.key_id)
        await panel.locator(".act-move-go").click()
        await expect(row).to_contain_text(f"moving from {a.key_id}")
        _, user = await control.admin("GET", f"/v1/users/{mover}")
        assert user["server_id"] == b.key_id and user["moving_from"] == a.key_id
        assert t.problems == []


async def test_a_wrong_token_is_refused_in_the_browser(control: ControlPlane, browser: Any) -> None:
    from playwright.async_api import expect

    async with tab(browser, control, LAPTOP) as t:
        await sign_in(t.page, control, token="not-the-token")
        await expect(t.page.locator(".error[role=alert]")).to_contain_text("not the admin token")
        assert await t.context.cookies() == []
        await t.page.goto("/dashboard/users")
        await expect(t.page).to_have_url(re.compile(r"/dashboard/login\?next=/dashboard/users$"))


async def test_actions_without_csrf_are_refused_and_logout_works(
    control: ControlPlane, browser: Any
) -> None:
    from playwright.async_api import expect

    await populate(control)
    async with tab(browser, control, LAPTOP) as t:
        await sign_in(t.page, control)
        cookies = await t.context.cookies()
        assert [(c["name"], c["httpOnly"], c["sameSite"]) for c in cookies] == [
            ("clawfleet_session", True, "Strict")
        ]
        assert await t.page.evaluate("document.cookie") == ""  # HttpOnly: invisible to scripts
        status = await t.page.evaluate(
            "fetch('/v1/users/alice/suspend', {method: 'POST'}).then(r => r.status)"
        )
        assert status == 403
        _, alice = await control.admin("GET", "/v1/users/alice")
        assert alice["state"] != "suspended"
        await t.page.click("#logout button")
        await expect(t.page).to_have_url(re.compile(r"/dashboard/login$"))
        status = await t.page.evaluate("fetch('/v1/users').then(r => r.status)")
        assert status == 401
        await t.page.goto("/dashboard")
        await expect(t.page).to_have_url(re.compile(r"/dashboard/login\?next=/dashboard$"))


async def test_events_page_updates_live_and_pages_back(
    control: ControlPlane, browser: Any, artifacts: Path
) -> None:
    from playwright.async_api import expect

    worker = await registered(control)
    for _ in range(55):  # 110 events, and no pending user to wake the autoscaler
        for action in ("cordon", "uncordon"):
            assert (await control.admin("POST", f"/v1/servers/{worker.key_id}/{action}"))[0] == 200
    _, newest = await control.admin("GET", "/v1/events?limit=1")
    top = newest["events"][0]["id"]
    async with tab(browser, control, PHONE) as t:
        await sign_in(t.page, control)
        await t.page.click("nav >> text=Events")
        rows = t.page.locator("#events tbody tr[data-event-id]")
        await expect(rows).to_have_count(100)
        await expect(rows.first).to_have_attribute("data-event-id", str(top))
        await expect(t.page.locator('tr[data-event-id="1"]')).to_have_count(0)
        await t.page.click("#older")  # GET /v1/events?before=<oldest shown>
        await expect(t.page.locator('tr[data-event-id="1"]')).to_have_count(1)
        await expect(rows).to_have_count(top)
        await expect(t.page.locator("#older")).to_be_disabled()
        # A decision taken elsewhere appears without a reload.
        await add_users(control, "late-comer")
        await expect(rows.first).to_contain_text("late-comer")
        await t.page.evaluate("window.scrollTo(0, 0)")
        await t.page.screenshot(path=str(artifacts / "events-phone.png"))  # the first screenful
        await t.page.fill("#event-filter", "subdomain late-comer")
        await expect(rows).to_have_count(1)
        assert t.problems == []
