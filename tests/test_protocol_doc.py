"""docs/protocol.md's worked examples are recomputed here, so the page stays true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared import protocol, signing

DOC = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()


def examples() -> list[str]:
    return re.split(r"^### Example \d+", DOC, flags=re.M)[1:]


def field(section: str, name: str) -> str:
    match = re.search(rf"^- {name}: `([^`]*)`", section, flags=re.M)
    if match is None:
        return ""  # "(empty)"
    return match.group(1)


@pytest.mark.parametrize("section", examples(), ids=lambda s: s.strip().splitlines()[0])
def test_worked_example(section: str) -> None:
    worker_id, secret = re.findall(r"`([^`]+)`", DOC.split("## Worked examples")[1])[:2]
    path, _, query = field(section, "target").partition("?")
    canonical = signing.canonical_string(
        field(section, "method"),
        path,
        query,
        field(section, "timestamp"),
        field(section, "nonce"),
        worker_id,
        field(section, "body").encode(),
    )
    block = re.search(r"```text\n(.*?)\n```", section, flags=re.S)
    assert block is not None
    assert canonical == block.group(1)
    assert signing.signature(secret, canonical) == field(section, "signature")


def test_there_are_two_examples() -> None:
    assert len(examples()) == 2


@pytest.mark.parametrize(
    ("row", "value"),
    [
        ("| `containers` | at most {} items |", protocol.MAX_CONTAINERS),
        ("| `containers[].error` | at most {} characters", protocol.MAX_TEXT),
        ("| any message | at most {} levels", protocol.MAX_DEPTH),
        ("accepted when `abs(floor(now) - timestamp) <= {}`", signing.MAX_CLOCK_SKEW),
    ],
)
def test_documented_bounds_are_the_enforced_ones(row: str, value: int) -> None:
    assert row.format(value) in DOC
