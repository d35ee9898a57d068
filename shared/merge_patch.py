"""JSON merge patch (RFC 7386), the one merge both sides use for a tenant's owned config.

Contract: `merge_patch(target, patch)` returns a new object (neither argument is changed):
objects merge key by key, recursively; `null` in the patch deletes the key; any other
value replaces the target's; keys absent from the patch are kept as they were. Over a
non-object the patch applies to `{}`, so its nulls never reach the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(target)
    for key, value in patch.items():
        below = merged.get(key)
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict):
            merged[key] = merge_patch(below if isinstance(below, dict) else {}, value)
        else:
            merged[key] = value
    return merged
