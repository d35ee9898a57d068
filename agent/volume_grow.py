"""Growing a block volume's ext4 file system to fill its device (a plan with more disk:
control/volumes/steps.py grows the volume at the provider, or the loop file here).

Contract: `grow(device, size, mounted)` makes the file system on `device` (`size`
bytes) as large as the device and never shrinks it; it runs nothing more than
`dumpe2fs -h` when the superblock says the file system fills the device already
(`fs_bytes`). Unmounted, it grows offline: a forced `e2fsck -p` first, as resize2fs
asks, and nothing is resized when e2fsck finds what it cannot repair. Mounted, it grows
online (`resize2fs` on the mounted device, which needs CAP_SYS_RESOURCE as well as
root). A failure is `VolumeError` with resize2fs's or e2fsck's one-line reason.
"""

from __future__ import annotations

from pathlib import Path

from agent.volume_commands import VolumeError, checked, run

RESIZE_TIMEOUT = 600.0
FSCK_TIMEOUT = 1800.0
FSCK_REPAIRED = (0, 1)  # e2fsck: no errors, or errors it corrected


def superblock_bytes(dumpe2fs: str) -> int:
    """The file system's size from `dumpe2fs -h`'s "Block count" and "Block size"."""
    fields = dict(line.split(":", 1) for line in dumpe2fs.splitlines() if ":" in line)
    try:
        return int(fields["Block count"]) * int(fields["Block size"])
    except (KeyError, ValueError):
        raise VolumeError("dumpe2fs printed no block count and size") from None


async def fs_bytes(device: Path) -> int:
    out = await checked(["dumpe2fs", "-h", str(device)], RESIZE_TIMEOUT, "dumpe2fs")
    return superblock_bytes(out)


async def grow(device: Path, size: int, mounted: bool) -> None:
    """Grows the file system on `device` (`size` bytes) to fill it."""
    if await fs_bytes(device) >= size:
        return
    if not mounted:
        fsck = await run(["e2fsck", "-f", "-p", str(device)], FSCK_TIMEOUT)
        if fsck.rc not in FSCK_REPAIRED:
            reason = fsck.err.strip() or fsck.out.strip() or f"status {fsck.rc}"
            raise VolumeError(f"e2fsck before growing the file system failed: {reason}")
    await checked(["resize2fs", str(device)], RESIZE_TIMEOUT, "growing the file system")
