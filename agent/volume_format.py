"""The one rule for formatting a block volume, and what it reads off the device.

Contract: `format_decision` is pure: mkfs.ext4 runs only when blkid finds no signature at
all AND the device's first MiB is zeros (`head_is_zero`); a bare ext4 file system is
mounted as it is; any other signature (a file system of another type, a partition table,
an ambiguous probe) is refused and left untouched.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, NamedTuple

HEAD_BYTES = 1 << 20  # what must be zeros, besides blkid's verdict, before a format


class Decision(NamedTuple):
    action: Literal["format", "mount", "refuse"]
    reason: str = ""


def format_decision(blkid_rc: int, blkid_export: str, head_zero: bool) -> Decision:
    """What to do with a device, from `blkid -p -o export` (its exit status and output)
    and whether its first MiB is zeros. blkid exits 2 when it finds nothing, 0 with
    TYPE=/PTTYPE= lines when it finds something, 8 when the probe is ambiguous."""
    found = {
        key: value
        for key, _, value in (line.partition("=") for line in blkid_export.splitlines())
        if value
    }
    if blkid_rc == 2 and not found.keys() & {"TYPE", "PTTYPE"}:
        if head_zero:
            return Decision("format")
        return Decision("refuse", "no known file system but the device is not blank")
    if blkid_rc == 0 and found.get("TYPE") == "ext4" and "PTTYPE" not in found:
        return Decision("mount")
    if blkid_rc == 0:
        found_kinds = [f"a {found['TYPE']} file system"] if "TYPE" in found else []
        found_kinds += ["a partition table"] if "PTTYPE" in found else []
        what = " and ".join(found_kinds) or "a signature"
        return Decision("refuse", f"holds {what}, not a bare ext4 volume")
    return Decision("refuse", f"blkid could not tell what the device holds (status {blkid_rc})")


def head_is_zero(device: Path) -> bool:
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return not os.read(fd, HEAD_BYTES).strip(b"\0")
    finally:
        os.close(fd)
