"""The fleet page shows what the users' volumes cost beside the servers' cost (issue 13,
point 7), in a real browser, and says so when the provider gave no volume price."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from control.capacity.providers.base import Provider, ServerType, VolumePrice
from control.capacity.providers.local import LocalProvider
from control.settings import Settings
from tests.dashboard.conftest import LAPTOP
from tests.dashboard.test_browser import sign_in, tab
from tests.fixtures import ControlPlane
from tests.test_hetzner_pricing import add_volume
from tests.test_protocol import registered

pytestmark = pytest.mark.browser


class PricedVolumes(LocalProvider):
    """The local provider with Hetzner-like prices for servers and volumes."""

    def server_type(self, name: str) -> ServerType:
        return ServerType(name=name, cpus=4, memory_mb=8192, disk_gb=80, hourly_price=0.0123)

    def volume_price(self) -> VolumePrice | None:
        return VolumePrice(0.044, "EUR")


def priced(settings: Settings) -> Provider:
    return PricedVolumes(settings.local_workers_dir)


async def start_with_volumes(control: ControlPlane) -> None:
    await control.start()
    worker = await registered(control, "worker-a")
    await control.admin("POST", "/v1/users", {"user_id": "alice", "subdomain": "alice"})
    await control.admin("POST", "/v1/users", {"user_id": "bob", "subdomain": "bob"})
    await add_volume(control, "alice", 10)
    await add_volume(control, "bob", 15)
    await asyncio.to_thread(_typed, control, worker.key_id)


def _typed(control: ControlPlane, server_id: str) -> None:
    """As the autoscaler records a server it created: with a type, so with a price."""
    with sqlite3.connect(control.settings.database_path, timeout=10) as db:
        db.execute("UPDATE servers SET server_type = 'cpx22' WHERE id = ?", (server_id,))


async def test_the_fleet_page_shows_the_volumes_cost_beside_the_servers(
    control_factory: Callable[..., ControlPlane], browser: Any, artifacts: Path
) -> None:
    from playwright.async_api import expect

    control = control_factory(priced)
    await start_with_volumes(control)
    async with tab(browser, control, LAPTOP) as t:
        await sign_in(t.page, control)
        volumes = t.page.locator("#total-volumes")
        await expect(volumes.locator(".value")).to_have_text("1.10 /month")  # 25 GB x 0.044
        await expect(volumes).to_contain_text("2 volume(s), 25 GB (net, EUR)")
        # 0.0123 x 730 + 1.10: both together, as the operator pays them
        await expect(volumes).to_contain_text("with servers ≈ 10.08 /month")
        await expect(t.page.locator("#total-cost .value")).to_have_text("0.0123 /h")
        await t.page.screenshot(path=str(artifacts / "fleet-volume-cost.png"), full_page=True)
        assert t.problems == []


async def test_without_a_volume_price_the_card_says_so(
    control_factory: Callable[..., ControlPlane], browser: Any
) -> None:
    from playwright.async_api import expect

    control = control_factory()  # the local provider: no price for anything
    await start_with_volumes(control)
    async with tab(browser, control, LAPTOP) as t:
        await sign_in(t.page, control)
        volumes = t.page.locator("#total-volumes")
        await expect(volumes.locator(".value")).to_have_text("—")
        await expect(volumes).to_contain_text("2 volume(s), 25 GB; no price from the provider")
        assert t.problems == []
