"""The README's demo "As a customer, in the browser", as a newcomer runs it: `make run`
(the control plane on its defaults, as a process: no Stripe key, no SMTP_HOST, the real
OpenClaw image), then Chromium at laptop size does the customer's whole path with no
`clawfleet` command:

- the sign-up page at the README's address: a name, the plan, an e-mail; Pay on the
  local stand-in for Stripe's hosted Checkout (its signed webhooks, the only thing that
  creates the user); the status page until ready; its "Open my agent" lands in the real
  OpenClaw Control UI at http://<name>.clawfleet.localhost:<port>/, Connected, with no
  pairing prompt;
- then, as a returning customer in a fresh browser (no cookie of the first visit), the
  sign-in page; the one-time link is the one the demo prints in the control plane's log
  on its `DEMO sign-in link for <address>` line (control/portal/demo_mail.py); the
  customer's page shows the agent running, and its "Open my agent" signs in again.

Every console error on the portal's own pages (a CSP violation too) fails. The real
gateway's cold start takes 10-20 s on a loaded 2-core machine, so the waits are bounded
at 180 s. The user's containers and volumes are purged by the `demo` fixture even when
the test fails. Screenshots: test-artifacts/make-run-portal/.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import docker
import pytest

from control.portal.demo_mail import SENT
from tests.agent.test_e2e import until
from tests.agent.test_make_run_openclaw import demo
from tests.agent.test_openclaw_e2e import ControlUi, assert_no_pairing, skip_without_browser
from tests.dashboard.conftest import CHROMIUM, CHROMIUM_ARGS, LAPTOP
from tests.make_run import MakeRun

pytestmark = [pytest.mark.docker, pytest.mark.openclaw]
__all__ = ["demo"]  # the fixture used below

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "make-run-portal"
WAIT_S = 180  # the placement, the container's start and the gateway's cold start


class Portal:
    """One browser context on the demo's portal, collecting its pages' console errors."""

    def __init__(self, run: MakeRun, page: Any) -> None:
        self.run = run
        self.page = page
        self.ui = ControlUi(page)  # it must watch the WebSockets from the first one
        self.problems: list[str] = []
        page.set_default_timeout(WAIT_S * 1000)
        page.on("console", self._console)
        page.on("pageerror", self._page_error)

    def _console(self, message: Any) -> None:
        # The agent's own page is OpenClaw's, not the portal's: its console is not ours
        # (it has its own checks: Connected, no pairing). Nor is the browser's own guess
        # at /favicon.ico (the sign-up, stand-in and status pages name no icon).
        where = message.location.get("url", "")
        ours = where.startswith(self.run.url) and where != f"{self.run.url}/favicon.ico"
        if message.type == "error" and ours:
            self.problems.append(f"{where}: {message.text}")

    def _page_error(self, error: Exception) -> None:
        if self.page.url.startswith(self.run.url):
            self.problems.append(f"{self.page.url}: page error: {error}")

    async def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=WAIT_S * 1000)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def visit(browser: Any, run: MakeRun) -> AsyncIterator[Portal]:
    context = await browser.new_context(viewport=LAPTOP)
    try:
        yield Portal(run, await context.new_page())
    finally:
        await context.close()


def agent_address(run: MakeRun, name: str) -> str:
    """The address the portal shows: the README's http://<name>.clawfleet.localhost:<port>."""
    return f"http://{name}.clawfleet.localhost:{run.router_port}"


async def sign_up_and_pay(portal: Portal, name: str, email: str) -> None:
    from playwright.async_api import expect

    page = portal.page
    await page.goto(f"{portal.run.url}/portal/signup")  # the README's address
    await page.fill("#subdomain", name)
    await expect(page.locator("#availability")).to_have_text("This address is free.")
    await page.check("input[name=plan][value=default]")
    await page.fill("#email", email)
    await portal.shot("1-signup")
    await page.click("#pay")
    await expect(page).to_have_url(re.compile(r"/portal/stand-in/checkout/cs_test_standin_"))
    await expect(page.locator("#order-subdomain")).to_have_text(name)
    await portal.shot("2-checkout-stand-in")
    await page.click("#pay")
    await expect(page).to_have_url(re.compile(r"/portal/status/"))


async def user_of(run: MakeRun, name: str) -> str:
    """The user id Stripe's webhook created for the sign-up of `name` (`clawfleet users`)."""

    async def created() -> str | None:
        users = json.loads(await asyncio.to_thread(run.cli, "users", "--json"))["users"]
        return next((u["user_id"] for u in users if u.get("subdomain") == name), None)

    return str(await until(created, f"the user of the sign-up {name}", timeout=60))


def leftover_users(name: str) -> list[str]:
    """Users of this sign-up that have containers: ids are `<name>-<8 hex>`."""
    client = docker.from_env(timeout=60)
    try:
        found = client.containers.list(all=True, filters={"label": "clawfleet.user"})
        ids = {c.labels.get("clawfleet.user", "") for c in found}
        return [i for i in ids if i.startswith(f"{name}-")]
    finally:
        client.close()


async def wait_ready_and_open(portal: Portal, name: str, user_id: str) -> None:
    from playwright.async_api import expect

    page, address = portal.page, agent_address(portal.run, name)
    await expect(page.locator("li[data-step=payment]")).to_have_class("done")
    await expect(page.locator("#message")).to_have_text("Your agent is ready.")
    await expect(page.locator("#address")).to_have_text(f"Your agent's address: {address}")
    await portal.shot("3-status-ready")
    await page.click("#open")
    await opened_signed_in(portal, f"{address}/", user_id, "4-control-ui")


async def opened_signed_in(portal: Portal, host: str, user_id: str, shot: str) -> None:
    """The page went through its one-time sign-in link to the real Control UI, which is
    connected with no pairing prompt (the ticket spent and out of the address bar)."""
    page = portal.page
    await page.wait_for_url(lambda url: url.startswith(host) and "ticket" not in url)
    await portal.ui.connected()
    assert user_id in portal.ui.page_text  # the gateway knows who signed in
    await portal.shot(shot)
    container = next(iter(portal.run.containers(user_id)))
    assert_no_pairing(portal.ui, container)


async def demo_link(run: MakeRun, email: str, since: int) -> str:
    """The sign-in link of the control plane's `DEMO sign-in link for <email>` line."""
    line = re.compile(
        rf"DEMO sign-in link for {re.escape(email)} .*?(https?://\S+/portal/signin/link#\S+)"
    )

    async def printed() -> str | None:
        found = line.search(run.log()[since:])
        return found.group(1) if found else None

    return str(await until(printed, f"the DEMO sign-in link for {email} in the log", timeout=60))


async def sign_in_again_and_open(portal: Portal, name: str, email: str, user_id: str) -> None:
    from playwright.async_api import expect

    page, since = portal.page, len(portal.run.log())
    await page.goto(f"{portal.run.url}/portal/signin")
    await page.fill("#email", email)
    await page.click("#signin button[type=submit]")
    await expect(page.locator("#message")).to_have_text(SENT)
    await page.goto(await demo_link(portal.run, email, since))
    await page.click("#continue")
    await expect(page).to_have_url(re.compile(r"/portal/account$"))
    await expect(page.locator(".agent .state")).to_have_text("Running.")
    address = agent_address(portal.run, name)
    await expect(page.locator(".agent .url")).to_have_text(address)
    await portal.shot("5-account")
    await page.click(".agent .open")
    await opened_signed_in(portal, f"{address}/", user_id, "6-control-ui-again")


async def test_make_run_portal_sign_up_pay_open_then_sign_in_again(demo: MakeRun) -> None:
    skip_without_browser()
    assert "NOTE: users run the real OpenClaw image clawfleet-openclaw:" in demo.log()
    name, started = f"p{uuid.uuid4().hex[:9]}", time.monotonic()
    email = f"{name}@example.com"
    try:
        async with chromium() as browser:
            async with visit(browser, demo) as first:
                await sign_up_and_pay(first, name, email)
                user_id = await user_of(demo, name)
                demo.users.append(user_id)
                await wait_ready_and_open(first, name, user_id)
                assert first.problems == []
            async with visit(browser, demo) as again:
                await sign_in_again_and_open(again, name, email, user_id)
                assert again.problems == []
    finally:
        # A failure before the user id was known: its containers are purged by the fixture
        # too. A Docker error here must not hide the test's own failure.
        with contextlib.suppress(docker.errors.DockerException):
            demo.users.extend(u for u in leftover_users(name) if u not in demo.users)
    print(f"the customer's whole path took {time.monotonic() - started:.0f} s")
