"""A lost volume on the dashboard (docs/backups.md "A lost volume"), in a real browser
against the real control plane and the fake Hetzner API: when the provider no longer has
the user's volume, each snapshot offers "Recover onto a new volume" instead of a restore
(there is nothing to restore onto), which asks first and then starts the recovery."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.conftest import LAPTOP
from tests.dashboard.test_browser import sign_in, tab
from tests.fakes.hetzner import HetznerFake
from tests.test_backup_jobs import BACKUPS
from tests.test_volume_recover import SNAP, lost
from tests.test_volumes_fleet import Start, cloud
from tests.test_volumes_relocation import user

pytestmark = pytest.mark.browser
__all__ = ["cloud"]  # the fixture, shared with tests/test_volumes_fleet.py


async def test_a_lost_volumes_snapshot_is_recovered_onto_a_new_volume_after_confirming(
    cloud: Start, hetzner_fake: HetznerFake, browser: Any, artifacts: Path
) -> None:
    from playwright.async_api import expect

    control = await cloud(**BACKUPS)
    second = await lost(control, hetzner_fake, snapshot=True)
    async with tab(browser, control, LAPTOP) as t:
        await sign_in(t.page, control)
        await t.page.goto("/dashboard/users")
        await t.page.locator('#users tr[data-user-id="alice"] .act-backups').click()
        panel = t.page.locator('tr[data-panel-for="alice"] .backups')
        await expect(panel.locator(".volume-line")).to_contain_text("restore needed")
        row = panel.locator(f'.snapshots tr[data-snapshot-id="{SNAP}"]')
        await expect(row.locator(".act-recover")).to_have_text("Recover onto a new volume")
        await expect(panel.locator(".act-restore")).to_have_count(0)

        asked: list[str] = []
        answers: list[asyncio.Future[Any]] = []  # kept: a dropped task may be collected

        def on_dialog(dialog: Any) -> None:
            asked.append(dialog.message)
            answers.append(asyncio.ensure_future(dialog.accept()))

        t.page.once("dialog", on_dialog)
        async with t.page.expect_response(lambda r: r.url.endswith("/v1/users/alice/recover")):
            await row.locator(".act-recover").click()
        await answers[0]
        assert "gone at the provider" in asked[0] and SNAP[:8] in asked[0]
        move = (await user(control))["move"]
        assert (move["phase"], move["to"], move["snapshot_id"]) == ("creating", second.key_id, SNAP)
        await t.page.screenshot(path=str(artifacts / "users-volume-recover.png"), full_page=True)
        assert t.problems == []
