"""A user's volume and backups on the dashboard's users page (issue 13, docs/backups.md),
in a real browser against the real control plane (volumes and backups on, the fake
Hetzner API with its GET /pricing (0.044 EUR per GB-month), a signed fake agent that pulls its jobs and reports them): the volume's
state, size and price, the snapshots and recent jobs, "Back up now", and "Restore this
snapshot" which asks first because it stops the container."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from tests.agent.test_e2e import until
from tests.dashboard.conftest import LAPTOP, PHONE
from tests.dashboard.test_browser import sign_in, tab
from tests.fakes.hetzner import HetznerFake
from tests.fixtures import ControlPlane
from tests.test_backup_jobs import (
    SNAP1,
    SNAP2,
    Start,
    backed_up,
    beat,
    jobs,
    listed,
    mounted_alice,
    snapshot_done,
)
from tests.test_volumes_fleet import specs
from tests.worker import FakeWorker

pytestmark = pytest.mark.browser
__all__ = ["backed_up"]  # the fixture, shared with tests/test_backup_jobs.py


async def alice_backed_up(control: ControlPlane, fake: HetznerFake) -> tuple[FakeWorker, str]:
    """alice running on her mounted volume with one done snapshot (SNAP1)."""
    worker, vid = await mounted_alice(control, fake)
    await snapshot_done(control, worker, vid, SNAP1)
    return worker, vid


async def open_backups(page: Any) -> Any:
    from playwright.async_api import expect

    await page.goto("/dashboard/users")
    row = page.locator('#users tr[data-user-id="alice"]')
    await expect(row.locator(".user-volume")).to_have_text("volume: attached · 10 GB · 0.44 /month")
    await row.locator(".act-backups").click()
    panel = page.locator('tr[data-panel-for="alice"] .backups')
    await expect(panel.locator(".volume-line")).to_contain_text(
        "attached 10 GB · nbg1 · 0.44 EUR /month"
    )
    return panel


async def test_back_up_now_then_restore_a_snapshot_after_confirming(
    backed_up: Start, hetzner_fake: HetznerFake, browser: Any, artifacts: Path
) -> None:
    from playwright.async_api import expect

    control = await backed_up()
    worker, vid = await alice_backed_up(control, hetzner_fake)
    async with tab(browser, control, LAPTOP) as t:
        await sign_in(t.page, control)
        panel = await open_backups(t.page)
        first = panel.locator(f'.snapshots tr[data-snapshot-id="{SNAP1}"]')
        await expect(first.locator("[data-label=Added]")).to_have_text("123 B")
        await expect(first.locator("[data-label=Why]")).to_have_text("operator")
        await panel.locator(".act-backup-now").click()
        # The click's POST runs in the browser: the worker sees the job once it is answered.
        (job,) = await until(lambda: jobs(worker), "the operator's snapshot job", 15)
        row = panel.locator(f'.jobs tr[data-job-id="{job["id"]}"]')
        await expect(row.locator(".badge")).to_have_text("pending")
        await expect(panel.locator(".act-backup-now")).to_be_disabled()  # one job at a time
        done = {"id": job["id"], "state": "done", "snapshot_id": SNAP2, "bytes_added": 2048}
        await beat(worker, ["alice"], [vid], [done])
        await expect(row.locator(".badge")).to_have_text("done")  # the panel follows the poll
        await expect(panel.locator(".snapshots tbody tr")).to_have_count(2)
        await expect(panel.locator(".act-backup-now")).to_be_enabled()

        # A restore asks first: dismissed, nothing happens.
        asked: list[str] = []
        answers: list[asyncio.Future[Any]] = []  # kept: a dropped task may be collected

        def answer(accept: bool) -> Any:
            def on_dialog(dialog: Any) -> None:
                asked.append(dialog.message)
                answers.append(
                    asyncio.ensure_future(dialog.accept() if accept else dialog.dismiss())
                )

            return on_dialog

        t.page.once("dialog", answer(False))
        await first.locator(".act-restore").click()  # returns once the dialog is answered
        await answers[0]
        assert len(asked) == 1 and "container stops" in asked[0] and SNAP1[:8] in asked[0]
        # A restore would have been sent at once; the next poll's listing comes after it.
        async with t.page.expect_response(re.compile(r"/v1/users/alice/backups$")):
            pass
        assert [j["kind"] for j in (await listed(control))["jobs"]] == ["snapshot", "snapshot"]
        assert "alice" in await specs(worker)

        t.page.once("dialog", answer(True))
        await first.locator(".act-restore").click()
        await expect(panel.locator(".restoring")).to_be_visible()
        (restore,) = [j for j in (await listed(control))["jobs"] if j["kind"] == "restore"]
        assert restore["snapshot_id"] == SNAP1 and restore["state"] == "pending"
        assert "alice" not in await specs(worker)  # the container is stopped meanwhile
        await expect(panel.locator(".act-restore").first).to_be_disabled()
        await t.page.screenshot(path=str(artifacts / "users-backups-laptop.png"), full_page=True)
        assert t.problems == []


async def test_the_backups_panel_fits_a_phone(
    backed_up: Start, hetzner_fake: HetznerFake, browser: Any, artifacts: Path
) -> None:
    from playwright.async_api import expect

    control = await backed_up()
    worker, vid = await alice_backed_up(control, hetzner_fake)
    failed = {"state": "failed", "error": "Fatal: unable to open repository " + "x" * 200}
    status, body = await control.admin("POST", "/v1/users/alice/backups")
    assert status == 202, body
    await jobs(worker)
    await beat(worker, ["alice"], [vid], [{"id": body["job"]["id"], **failed}])
    async with tab(browser, control, PHONE) as t:
        await sign_in(t.page, control)
        panel = await open_backups(t.page)
        await expect(panel.locator(".jobs .error")).to_contain_text("unable to open repository")
        await expect(panel.locator(".act-restore")).to_be_visible()
        width = await t.page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"]  # the long error wraps instead of widening the page
        await t.page.screenshot(path=str(artifacts / "users-backups-phone.png"), full_page=True)
        assert t.problems == []


async def test_with_backups_off_the_panel_says_so(
    backed_up: Start, hetzner_fake: HetznerFake, browser: Any
) -> None:
    from playwright.async_api import expect

    hetzner_fake.volume_price_per_gb_month = None  # no `volume` in GET /pricing
    control = await backed_up(backup_s3_endpoint="")
    await mounted_alice(control, hetzner_fake)
    async with tab(browser, control, LAPTOP) as t:
        await sign_in(t.page, control)
        await t.page.goto("/dashboard/users")
        await t.page.locator('#users tr[data-user-id="alice"] .act-backups').click()
        panel = t.page.locator('tr[data-panel-for="alice"] .backups')
        await expect(panel).to_contain_text("Backups are off")
        await expect(panel).to_contain_text("No snapshots yet.")
        await expect(panel.locator(".act-backup-now")).to_be_disabled()
        await expect(panel.locator(".volume-line")).to_contain_text("no price")
        assert t.problems == []
