"""Dashboard fixtures and the browser rule: a test marked `browser` is skipped when
/usr/bin/chromium (or the Python `playwright` package) is missing, except under
CI=true, where that skip becomes a failure — the same rule tests/conftest.py applies
to Docker tests.

The browser is the Debian `chromium` driven by Playwright; `playwright install` is
never needed (and never run). Screenshots go to test-artifacts/dashboard/.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
LAPTOP = {"width": 1366, "height": 860}
PHONE = {"width": 390, "height": 844}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: drives headless Chromium (a skip is a failure under CI=true)"
    )


def browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is missing (pip install playwright)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = [item for item in items if item.get_closest_marker("browser")]
    if not marked:
        return
    missing = browser_missing()
    if missing is None:
        return
    if os.environ.get("CI") == "true":
        raise pytest.UsageError(f"CI=true but {missing}: browser tests must run in CI")
    skip = pytest.mark.skip(reason=f"{missing} (set CI=true to make this a failure)")
    for item in marked:
        item.add_marker(skip)


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            await chromium.close()
