"""The customer's whole path in a real browser (headless Debian Chromium driven by
Playwright), at phone and laptop sizes, as in the `make run` demo: no Stripe account,
so the portal's local stand-ins for Stripe's Checkout and billing portal, whose buttons
send the signed webhooks Stripe would; a real SMTP server (aiosmtpd) for the sign-in
mail; a real agent process running the customer's busybox container on the local Docker
engine (the generic tenant profile plus one customer-settable key: the real OpenClaw is
not the point here, tests/agent/test_make_run_openclaw.py drives it).

sign up -> pay (stand-in) -> status page until ready -> open the agent; sign in again by
the e-mailed link; set an API key and see the container restart with it; cancel through
the billing stand-in's webhook. Every console error (a CSP violation too) fails.
Screenshots land in test-artifacts/dashboard/ (the README shows some, docs/images/).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from control.settings import profiles
from tests import stripe_events as se
from tests.agent.conftest import GOOD, AgentProcess, agent_proc, dclient, test_images
from tests.agent.images import PORT
from tests.agent.test_e2e import make_agent, until, user_containers
from tests.dashboard.conftest import LAPTOP, PHONE
from tests.fixtures import ControlPlane
from tests.portal_customers import MAIL_FROM, Inbox, link_in, smtp

pytestmark = [pytest.mark.browser, pytest.mark.docker]
__all__ = ["agent_proc", "dclient", "smtp", "test_images"]  # fixtures used below
WAIT_MS = 90_000  # the container's start on a shared Docker engine
DOMAIN = "example.test"
KEY = "sk-ant-test-whole-path-0123456789"
PROFILE = """min_memory_mb = 16
[volumes]
state = "/home/node/.openclaw"
[secrets]
volume = "state"
path = ".env"
names = ["ANTHROPIC_API_KEY"]
"""


def demo_plane(
    control_factory: Callable[..., ControlPlane], tmp_path: Path, smtp_port: int
) -> ControlPlane:
    """`make run`'s shape: no Stripe key (so the stand-ins), a webhook secret, mail."""
    profile = tmp_path / "portal-demo.toml"
    profile.write_text(PROFILE)
    return control_factory(
        agent_image=GOOD,
        agent_port=PORT,
        agent_health_path="/healthz",
        agent_user="1000:1000",
        base_domain=DOMAIN,
        heartbeat_interval=1.0,
        tenant_profile=profiles.load(str(profile)),
        stripe_webhook_secret=se.WEBHOOK_SECRET,
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        smtp_tls="none",
        mail_from=MAIL_FROM,
    )


@contextlib.asynccontextmanager
async def opened(
    browser: Any, plane: ControlPlane, viewport: dict[str, int]
) -> AsyncIterator[tuple[Any, list[str]]]:
    from playwright.async_api import expect

    expect.set_options(timeout=WAIT_MS)
    context = await browser.new_context(viewport=viewport, base_url=plane.url)
    problems: list[str] = []

    async def agent_page(route: Any) -> None:  # the agent's own address: not this test's
        await route.fulfill(status=200, content_type="text/html", body="<h1>Your agent</h1>")

    await context.route(re.compile(rf"^https?://[a-z0-9-]+\.{re.escape(DOMAIN)}/"), agent_page)
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    try:
        yield page, problems
    finally:
        await context.close()


async def shot(page: Any, artifacts: Path, name: str, size: str) -> None:
    await page.screenshot(path=str(artifacts / f"whole-path-{name}-{size}.png"), full_page=True)


async def worker_up(plane: ControlPlane) -> None:
    async def active() -> bool:
        _, body = await plane.admin("GET", "/v1/servers")
        return any(s["status"] == "active" for s in body["servers"])

    await until(active, "the agent registered", timeout=60)


async def sign_up_and_pay(page: Any, artifacts: Path, size: str, name: str) -> None:
    from playwright.async_api import expect

    await page.goto("/portal/signup")
    await page.fill("#subdomain", name)
    await expect(page.locator("#availability")).to_have_text("This address is free.")
    await page.fill("#email", f"{name}@example.com")
    await shot(page, artifacts, "1-signup", size)
    await page.click("#pay")
    await expect(page).to_have_url(re.compile(r"/portal/stand-in/checkout/cs_test_standin_"))
    await expect(page.locator(".stand-in-banner")).to_contain_text("Local stand-in")
    await expect(page.locator("#order-subdomain")).to_have_text(name)
    await shot(page, artifacts, "2-checkout-stand-in", size)
    await page.click("#pay")
    await expect(page).to_have_url(re.compile(r"/portal/status/"))


async def wait_ready_and_open(page: Any, artifacts: Path, size: str, name: str) -> None:
    from playwright.async_api import expect

    await expect(page.locator("li[data-step=payment]")).to_have_class("done")
    await expect(page.locator("#message")).to_have_text("Your agent is ready.")
    await shot(page, artifacts, "3-status-ready", size)
    await page.click("#open")
    await expect(page).to_have_url(re.compile(rf"^https?://{name}\.{re.escape(DOMAIN)}"))


async def sign_in_by_mail(page: Any, inbox: Inbox, artifacts: Path, size: str, name: str) -> None:
    from playwright.async_api import expect

    await page.goto("/portal/signin")
    await page.fill("#email", f"{name}@example.com")
    await page.click("#signin button[type=submit]")
    await expect(page.locator("#message")).not_to_be_empty()
    recipients, message = await inbox.next(timeout=30)
    assert recipients == [f"{name}@example.com"]
    link, token = link_in(message)
    await page.goto(f"{link}#{token}")
    await page.click("#continue")
    await expect(page).to_have_url(re.compile(r"/portal/account$"))
    await expect(page.locator(".agent .state")).to_have_text("Running.")
    await shot(page, artifacts, "4-account", size)


def secret_file(dclient: docker.DockerClient, user_id: str) -> tuple[str, str]:
    """(container id and start, the secrets file's content) of the user's container."""
    [container] = [c for c in user_containers(dclient, user_id) if c.status == "running"]
    out = container.exec_run(["/bin/busybox", "cat", "/home/node/.openclaw/.env"], user="1000:1000")
    text = out.output.decode() if out.exit_code == 0 else f"exit {out.exit_code}: {out.output!r}"
    return f"{container.id}:{container.attrs['State']['StartedAt']}", text


async def set_key_and_see_restart(
    page: Any, dclient: docker.DockerClient, user_id: str, artifacts: Path, size: str
) -> None:
    from playwright.async_api import expect

    before, text = await asyncio.to_thread(secret_file, dclient, user_id)
    assert KEY not in text
    await page.fill("#key-ANTHROPIC_API_KEY", KEY)
    await page.click(".settings button[type=submit]")
    await expect(page.locator("#message")).to_have_text("Saved. Your agent is restarting with it.")

    seen: list[Any] = []

    async def restarted_with_key() -> bool:
        try:
            now, text = await asyncio.to_thread(secret_file, dclient, user_id)
        except (ValueError, docker.errors.APIError) as exc:  # between two containers
            seen.append(exc)
            return False
        seen.append((now, text.replace(KEY, "<KEY>")))
        return now != before and f"ANTHROPIC_API_KEY={KEY}" in text

    try:
        await until(restarted_with_key, "the container restarted with the key", timeout=90)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; before {before}, last seen {seen[-3:]}") from None
    await page.reload()
    await expect(page.locator(".agent .state")).to_have_text("Running.")
    await expect(page.locator("label[for=key-ANTHROPIC_API_KEY]")).to_contain_text("(set)")
    await shot(page, artifacts, "5-key-set", size)


async def cancel_in_billing(page: Any, artifacts: Path, size: str) -> None:
    from playwright.async_api import expect

    await page.click(".agent .billing")
    await expect(page).to_have_url(re.compile(r"/portal/stand-in/billing/bps_test_standin_"))
    await expect(page.locator("#cancel-sub")).to_be_visible()
    await shot(page, artifacts, "6-billing-stand-in", size)
    await page.click("#cancel-sub")
    await expect(page).to_have_url(re.compile(r"/portal/account$"))

    async def cancelled() -> bool:
        await page.reload()
        return bool(re.match("Cancelled", await page.locator(".agent .state").inner_text()))

    await until(cancelled, "the account page says cancelled", timeout=30)
    # Nothing runs to open, configure or sign out of; invoices stay reachable.
    await expect(page.locator(".agent .open, .agent .settings, .agent .rotate")).to_have_count(0)
    await expect(page.locator(".agent .billing")).to_be_visible()
    await shot(page, artifacts, "7-cancelled", size)


@pytest.mark.parametrize("size", ["phone", "laptop"])
async def test_the_whole_path_in_a_browser(
    control_factory: Callable[..., ControlPlane],
    smtp: tuple[Inbox, int],
    browser: Any,
    artifacts: Path,
    test_images: dict[str, str],
    agent_proc: list[AgentProcess],
    dclient: docker.DockerClient,
    tmp_path: Path,
    size: str,
) -> None:
    inbox, smtp_port = smtp
    plane = demo_plane(control_factory, tmp_path, smtp_port)
    await plane.start()
    await make_agent(plane, tmp_path, agent_proc)
    await worker_up(plane)
    name = "alice" if size == "laptop" else "bob"  # the user id P1 makes is unique anyway
    user_id = ""
    try:
        async with opened(browser, plane, PHONE if size == "phone" else LAPTOP) as (page, bad):
            await sign_up_and_pay(page, artifacts, size, name)
            _, users = await plane.admin("GET", "/v1/users")
            (user,) = users["users"]
            user_id = user["user_id"]
            await wait_ready_and_open(page, artifacts, size, name)
            await sign_in_by_mail(page, inbox, artifacts, size, name)
            await set_key_and_see_restart(page, dclient, user_id, artifacts, size)
            await cancel_in_billing(page, artifacts, size)
            _, after = await plane.admin("GET", f"/v1/users/{user_id}")
            assert after["state"] == "deprovisioned", after
            assert bad == []
    finally:
        if user_id:
            from tests.agent.conftest import purge_user

            await asyncio.to_thread(purge_user, dclient, user_id)
