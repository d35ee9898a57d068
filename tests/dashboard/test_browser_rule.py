"""The browser rule of tests/dashboard/conftest.py: skip locally, fail under CI=true."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from tests.dashboard import conftest


class StubItem:
    def __init__(self, marked: bool) -> None:
        self.marked = marked
        self.added: list[Any] = []

    def get_closest_marker(self, name: str) -> object | None:
        return object() if self.marked and name == "browser" else None

    def add_marker(self, marker: Any) -> None:
        self.added.append(marker)


def run_rule(items: list[StubItem]) -> None:
    conftest.pytest_collection_modifyitems(
        cast(pytest.Config, None), cast(list[pytest.Item], items)
    )


def test_missing_chromium_skips_only_browser_tests_locally(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(conftest, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.delenv("CI", raising=False)
    browser_item, plain_item = StubItem(True), StubItem(False)
    run_rule([browser_item, plain_item])
    assert len(browser_item.added) == 1 and plain_item.added == []
    assert "no-chromium" in browser_item.added[0].kwargs["reason"]


def test_missing_chromium_fails_the_run_under_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(conftest, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.UsageError, match="browser tests must run in CI"):
        run_rule([StubItem(True)])


def test_present_chromium_changes_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "chromium"
    fake.write_text("")
    monkeypatch.setattr(conftest, "CHROMIUM", fake)
    monkeypatch.setenv("CI", "true")
    item = StubItem(True)
    run_rule([item])  # playwright is installed in the dev environment
    assert item.added == []
