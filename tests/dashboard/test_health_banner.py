"""The dashboard says when the cloud provider or the DNS provider cannot be used, with
the detail as text, and says nothing once both are back (real Chromium, fake Hetzner and
Cloudflare APIs failing as in an outage)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.conftest import LAPTOP, PHONE
from tests.dashboard.test_browser import sign_in, tab
from tests.fakes.cloudflare import CloudflareFake
from tests.fakes.hetzner import HetznerFake, agent_dist, provider_with_timeout
from tests.fixtures import ControlPlane

pytestmark = pytest.mark.browser
MARKUP = '<img src=x onerror="document.title=1">'  # in an answer: shown, never parsed


async def test_a_banner_names_each_provider_that_is_down_until_it_is_back(
    control_factory: Callable[..., ControlPlane],
    hetzner_fake: HetznerFake,
    cloudflare_fake: CloudflareFake,
    browser: Any,
    artifacts: Path,
    tmp_path: Path,
) -> None:
    from playwright.async_api import expect

    hetzner_fake.inject("GET /server_types", 503, "unavailable", times=1000)
    cloudflare_fake.outage(503, message="edge down " + MARKUP)
    control = control_factory(
        provider_with_timeout(1.0),
        provider="hetzner",
        hetzner_api_token=hetzner_fake.token,
        hetzner_api_endpoint=hetzner_fake.url,
        hetzner_locations=("nbg1",),
        agent_dist_dir=agent_dist(tmp_path / "dist"),
        dns_provider="cloudflare",
        cloudflare_api_token=cloudflare_fake.token,
        cloudflare_zone_id=cloudflare_fake.zone_id,
        cloudflare_api_base=cloudflare_fake.url,
        base_domain="example.com",
        provider_startup_wait=0.5,
    )
    await control.start()
    async with tab(browser, control, LAPTOP) as t:
        await sign_in(t.page, control)
        banner = t.page.locator("#health-banner")
        provider = banner.locator('.banner-line[data-source="provider"]')
        dns = banner.locator('.banner-line[data-source="dns"]')
        await expect(banner).to_be_visible()
        await expect(provider).to_have_text(
            re.compile(r"^Cloud provider not validated yet, retrying.*unavailable")
        )
        await expect(dns).to_have_text(re.compile(r"^DNS provider not verified yet.*edge down"))
        await expect(dns).to_contain_text(MARKUP)  # the markup as text ...
        await expect(banner.locator("img")).to_have_count(0)  # ... not an element
        await t.page.screenshot(path=str(artifacts / "health-banner-laptop.png"), full_page=True)
        await t.page.set_viewport_size(PHONE)
        await t.page.screenshot(path=str(artifacts / "health-banner-phone.png"), full_page=True)
        hetzner_fake.clear_faults()
        cloudflare_fake.clear_faults()
        await expect(banner).to_be_hidden()  # both validated again, seen by the next poll
        await expect(banner.locator(".banner-line")).to_have_count(0)
        assert t.problems == []
