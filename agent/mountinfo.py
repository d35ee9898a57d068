"""What is mounted where, from /proc/self/mountinfo.

Contract: `parse_mountinfo` is pure (lines it cannot read are skipped; octal escapes in
paths are undone); `mounted_at` is the topmost mount at a path, `held` the mounts
directly under a directory by name. `read_mountinfo` reads this process's mount table.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple


class MountEntry(NamedTuple):
    device: str  # "major:minor"
    root: str
    target: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    entries = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 2:
            continue
        entries.append(
            MountEntry(fields[2], _unescape(fields[3]), _unescape(fields[4]), tail[0], tail[1])
        )
    return entries


def mounted_at(entries: Sequence[MountEntry], target: Path) -> MountEntry | None:
    """The topmost mount at `target` (a later line covers an earlier one)."""
    found = [e for e in entries if e.target == str(target)]
    return found[-1] if found else None


def held(entries: Sequence[MountEntry], mounts: Path) -> dict[str, MountEntry]:
    """Volume id -> mount, for every mount directly under `mounts`."""
    return {
        Path(e.target).name: e
        for e in entries
        if Path(e.target).parent == mounts and Path(e.target).name
    }


def read_mountinfo() -> list[MountEntry]:
    return parse_mountinfo(Path("/proc/self/mountinfo").read_text())
