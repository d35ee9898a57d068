"""shared/merge_patch.py: RFC 7386 over the owned keys of a tenant's config (the agent
merges them over the customer's file; the control plane merges the local demo's extra
keys over them)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.merge_patch import merge_patch


@pytest.mark.parametrize(
    ("current", "owned", "expected"),
    [
        ({}, {"a": 1}, {"a": 1}),
        ({"a": 1, "b": 2}, {"a": 3}, {"a": 3, "b": 2}),
        ({"g": {"x": 1, "y": 2}}, {"g": {"x": 9}}, {"g": {"x": 9, "y": 2}}),
        (
            {"g": {"x": {"deep": 1, "keep": 2}}},
            {"g": {"x": {"deep": 0}}},
            {"g": {"x": {"deep": 0, "keep": 2}}},
        ),
        ({"g": "scalar"}, {"g": {"x": 1}}, {"g": {"x": 1}}),
        ({"g": {"x": 1}}, {"g": "scalar"}, {"g": "scalar"}),
        ({"l": [1, 2, 3]}, {"l": [4]}, {"l": [4]}),
        ({"customer": {"model": "m"}}, {}, {"customer": {"model": "m"}}),
        ({"a": None}, {"a": {"b": 1}}, {"a": {"b": 1}}),
        # RFC 7386: null deletes, at any depth, and never lands in the file itself.
        ({"auth": {"mode": "m", "token": "t"}}, {"auth": {"token": None}}, {"auth": {"mode": "m"}}),
        ({"a": 1}, {"gone": None}, {"a": 1}),
        ({"g": "scalar"}, {"g": {"x": None, "y": 1}}, {"g": {"y": 1}}),
        ({}, {"g": {"h": {"x": None}}}, {"g": {"h": {}}}),
    ],
)
def test_merge_patch_follows_rfc_7386(
    current: dict[str, Any], owned: dict[str, Any], expected: dict[str, Any]
) -> None:
    before = json.dumps(current)
    assert merge_patch(current, owned) == expected
    assert json.dumps(current) == before  # the input is not changed
