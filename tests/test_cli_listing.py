"""The CLI's list commands: an empty list says so, a full one is a table with a header
row and one row per item."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from control.cli.render import render_events, render_servers, render_users

RENDERERS: list[tuple[str, Callable[[dict[str, Any]], str], dict[str, Any], str]] = [
    ("servers", render_servers, {"id": "srv-a1", "status": "active"}, "srv-a1"),
    ("users", render_users, {"user_id": "vic2", "subdomain": "vic"}, "vic2"),
    ("events", render_events, {"id": 7, "kind": "scale_up", "message": "m"}, "scale_up"),
]


@pytest.mark.parametrize(("key", "render", "item", "shown"), RENDERERS)
def test_an_empty_list_says_so(
    key: str, render: Callable[[dict[str, Any]], str], item: dict[str, Any], shown: str
) -> None:
    assert render({key: []}) == f"no {key}"


@pytest.mark.parametrize(("key", "render", "item", "shown"), RENDERERS)
def test_a_list_is_a_header_and_a_row_each(
    key: str, render: Callable[[dict[str, Any]], str], item: dict[str, Any], shown: str
) -> None:
    lines = render({key: [item, item]}).splitlines()
    assert len(lines) == 3 and lines[0].split()[0] in ("ID", "USER")
    assert all(shown in line for line in lines[1:])
