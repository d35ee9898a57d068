"""The dashboard says what the API says about agent features: a user whose worker's agent
lacks a feature its spec needs shows why no container runs ("not started: ..."), and a
server's page lists the features its agent declared, or that it declared none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.features import FEATURES
from control.settings import profiles
from tests.dashboard.conftest import LAPTOP
from tests.dashboard.test_browser import sign_in, tab
from tests.fixtures import ControlPlane
from tests.test_agent_features import specs, user, worker

pytestmark = pytest.mark.browser


async def test_a_withheld_user_and_a_servers_features_are_shown(
    control_factory: Any, browser: Any, artifacts: Path
) -> None:
    from playwright.async_api import expect

    control: ControlPlane = control_factory(tenant_profile=profiles.load("openclaw"))
    await control.start()
    w = await worker(control, "w", list(FEATURES))
    await control.admin("POST", "/v1/users", {"user_id": "alice", "subdomain": "a"})
    assert await specs(w) == ["alice"]
    w.features = []  # an older agent reinstalled on the server
    assert (await w.heartbeat()).status == 200
    reason = (await user(control))["spec_withheld"]
    assert reason

    async with tab(browser, control, LAPTOP) as t:
        await sign_in(t.page, control)
        await t.page.goto("/dashboard/users")
        await expect(t.page.locator("tr[data-user-id=alice] .user-withheld")).to_have_text(
            "not started: " + reason
        )
        await t.page.screenshot(path=str(artifacts / "user-spec-withheld.png"))
        await t.page.goto(f"/dashboard/servers/{w.key_id}")
        await expect(t.page.locator("#agent-features")).to_have_text(
            "none declared (an agent older than features gets no user)"
        )
        w.features = list(FEATURES)
        assert (await w.heartbeat()).status == 200
        await t.page.reload()
        await expect(t.page.locator("#agent-features")).to_have_text(", ".join(sorted(FEATURES)))
        assert t.problems == []
