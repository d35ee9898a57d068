"""A returning customer in a real browser (headless Chromium, Playwright), at phone and
laptop sizes: asks for a sign-in link, opens the mailed link (a real SMTP server got
it), lands on their page, sets an API key (never shown back) and reads what
cancelling means; then presses Restart (the container is replaced), Sign out
everywhere (the browser's old session and the agent's old key end) and Open my agent
(the browser goes to a fresh sign-in link into the agent). No console error (a CSP
violation is one), no request elsewhere. Screenshots land in test-artifacts/dashboard/."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from shared import signin
from tests.dashboard.conftest import LAPTOP, PHONE
from tests.dashboard.http import call
from tests.dashboard.test_browser import tab
from tests.fakes.stripe_api import StripeFake, stripe_fake_fixture  # noqa: F401
from tests.fixtures import ControlPlane
from tests.portal_customers import Inbox, add_customer, link_in, portal_plane, smtp  # noqa: F401
from tests.test_protocol import registered
from tests.worker import FakeWorker

pytestmark = pytest.mark.browser
KEY = "sk-ant-browser-" + "k3y" * 10
AGENT_SITE = "https://alice.clawfleet.localhost"


async def sign_in_by_mail(page: Any, inbox: Inbox) -> None:
    from playwright.async_api import expect

    _, message = await inbox.next()
    url, token = link_in(message)
    await page.goto(f"{url}#{token}")
    await expect(page).to_have_url(re.compile(r"/portal/signin/link$"))  # fragment gone
    await page.click("#continue")
    await expect(page).to_have_url(re.compile(r"/portal/account$"))


async def with_alice(
    control_factory: Callable[..., ControlPlane],
    smtp: tuple[Inbox, int],  # noqa: F811
    stripe_fake: StripeFake,
) -> tuple[ControlPlane, FakeWorker, Inbox]:
    """A started portal plane with a registered worker and alice, a paid customer."""
    inbox, port = smtp
    plane = portal_plane(control_factory, port, stripe_fake)
    await plane.start()
    worker = await registered(plane)
    await add_customer(plane, "alice", "alice@example.com")
    return plane, worker, inbox


async def ask_and_sign_in(page: Any, inbox: Inbox) -> None:
    """Alice asks for a link on the sign-in page and follows the one mailed to her."""
    await page.goto("/portal/signin")
    await page.fill("#email", "alice@example.com")
    await page.click("button[type=submit]")
    await sign_in_by_mail(page, inbox)


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

    plane, worker, inbox = await with_alice(control_factory, smtp, stripe_fake)
    async with tab(browser, plane, viewport) as opened:
        page = opened.page
        await page.goto("/portal/account")
        await expect(page).to_have_url(re.compile(r"/portal/signin$"))
        await page.fill("#email", "alice@example.com")
        await page.click("button[type=submit]")
        await expect(page.locator("#message")).to_contain_text("sign-in link is on its way")
        await page.screenshot(path=str(artifacts / f"portal-signin-{size}.png"), full_page=True)

        await sign_in_by_mail(page, inbox)
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


async def spec_hash(worker: FakeWorker, user_id: str) -> str:
    reply = await worker.assignments()
    return str(next(c for c in reply.body["containers"] if c["user_id"] == user_id)["spec_hash"])


async def portal_cookie(context: Any) -> str:
    (cookie,) = [c for c in await context.cookies() if c["name"] == "clawfleet_portal"]
    return str(cookie["value"])


async def test_restart_sign_out_everywhere_and_open(
    control_factory: Callable[..., ControlPlane],
    smtp: tuple[Inbox, int],  # noqa: F811
    stripe_fake: StripeFake,
    browser: Any,
    artifacts: Path,
) -> None:
    from playwright.async_api import expect

    plane, worker, inbox = await with_alice(control_factory, smtp, stripe_fake)
    async with tab(browser, plane, LAPTOP) as opened:
        page = opened.page
        await ask_and_sign_in(page, inbox)
        message = page.locator("#message")

        before = await spec_hash(worker, "alice")
        await page.click(".agent .restart")
        await expect(message).to_contain_text("restarting")
        assert await spec_hash(worker, "alice") != before  # the container was replaced

        old_session = await portal_cookie(opened.context)
        _, old_access = await plane.admin("GET", "/v1/users/alice/access")
        await page.click(".agent .rotate")
        await expect(message).to_contain_text("everyone else is signed out")
        ended = await call(
            plane,
            "GET",
            "/portal/api/account",
            headers={"Cookie": f"clawfleet_portal={old_session}"},
        )
        assert ended.status == 401  # the session this browser had is over
        assert await portal_cookie(opened.context) != old_session  # it got a new one
        _, access = await plane.admin("GET", "/v1/users/alice/access")
        assert access["token"] != old_access["token"]  # the agent's sign-ins end too
        await page.screenshot(path=str(artifacts / "portal-account-rotated-laptop.png"))

        # Open: the browser goes to a fresh sign-in link into the agent, which a stand-in
        # answers here (the agent's own site is not on this machine).
        await page.route(f"{AGENT_SITE}/**", lambda route: route.fulfill(body="the agent"))
        await page.click(".agent .open")
        await expect(page).to_have_url(re.compile("^" + re.escape(AGENT_SITE) + "/"))
        (ticket,) = parse_qs(urlsplit(page.url).query)["ticket"]
        key = signin.signin_key(access["token"])  # the key after rotation signs it
        assert signin.check_ticket(key, "alice", ticket, time.time()) is not None
        assert opened.problems == [f"external request: {page.url}"]  # that and nothing else
