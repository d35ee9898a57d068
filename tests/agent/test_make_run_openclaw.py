"""The README's one-machine demo, as a newcomer runs it: `make run` (the control plane on
its defaults, as a process), `clawfleet simulate-payment`, `clawfleet login-link`, and a
browser that opens the link at http://<user>.clawfleet.localhost:<port>/ and gets the
real OpenClaw Control UI, signed in, with no pairing prompt. Chromium resolves
*.localhost to loopback by itself, so the browser is loopback here, as on a laptop.

Screenshot: test-artifacts/make-run/control-ui.png.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.conftest import new_user
from tests.agent.test_openclaw_e2e import ControlUi, assert_no_pairing, skip_without_browser
from tests.dashboard.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.make_run import MakeRun

pytestmark = [pytest.mark.docker, pytest.mark.openclaw]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "make-run"


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[MakeRun]:
    run = MakeRun(tmp_path / "checkout")
    try:
        run.start()
        yield run
    finally:
        run.close()


async def test_make_run_then_payment_then_login_link_opens_the_real_control_ui(
    demo: MakeRun,
) -> None:
    skip_without_browser()
    from playwright.async_api import async_playwright

    assert "NOTE: users run the real OpenClaw image clawfleet-openclaw:" in demo.log()
    user = new_user()
    demo.cli("simulate-payment", user)
    demo.wait_running(user)
    link = demo.cli("login-link", user).strip()
    host = f"http://{user}.clawfleet.localhost:{demo.router_port}/"
    assert link.startswith(f"{host}_clawfleet/signin?ticket="), link

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = await browser.new_page(viewport={"width": 1366, "height": 860})
            ui = ControlUi(page)
            await page.goto(link)
            # The ticket is spent and out of the address bar (the UI may route on, to
            # /chat/main, as soon as it loads).
            assert page.url.startswith(host) and "ticket" not in page.url, page.url
            await ui.connected()
            assert user in ui.page_text  # the gateway knows who signed in
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "control-ui.png"))
            container = next(iter(demo.containers(user)))
            assert_no_pairing(ui, container)
            # TINI_SUBREAPER: the image's tini under Docker's init reaps, silently.
            assert "Tini is not running as PID 1" not in container.logs().decode()
        finally:
            await browser.close()
