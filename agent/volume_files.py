"""The files, devices and directories behind block volumes, touched directly.

Contract: `create_sparse` makes a loop file only when absent, and `grow_sparse` grows
one smaller than its spec's size (a bigger plan), never shrinking it; `device_size` is
a block device's size in bytes as the kernel sees it now; `lock` holds an flock on a
loop file (None when a non-blocking lock is held elsewhere); `attached_device` is
`VolumeMissing` for a device that is not there; `device_number` refuses anything but a
block device; `tenant_dir` makes `<mount>/<name>` a real directory (never through a
link) owned by the container's user, 0700, and leaves one the tenant already owns as it
is; `copy_in` makes `<mount>/<name>` a copy of a directory all at once (made aside and
renamed into place), so a copy cut short is made again rather than taken for the data.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import stat
from pathlib import Path

from agent.volume_commands import VolumeError, VolumeMissing, checked

COPY_TIMEOUT = 3600.0  # adopting a Docker volume's content (tenant_dirs)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def device_number(device: Path) -> str:
    """The block device's "major:minor", as /proc/self/mountinfo names a mount's device."""
    info = os.stat(device)
    if not stat.S_ISBLK(info.st_mode):
        raise VolumeError(f"{device} is not a block device")
    return f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}"


async def copy_in(source: Path, mount: Path, name: str) -> None:
    """`<mount>/<name>` becomes a copy of `source` (owners, modes and links kept, never
    followed), all at once: the copy is made aside and renamed into place, so a copy cut
    short is made again from the start rather than taken for the data."""
    staging = mount / f".{name}.adopting"
    await asyncio.to_thread(shutil.rmtree, staging, True)  # a cut-short copy, not data
    await checked(
        ["cp", "-a", "--", f"{source}/.", str(staging)], COPY_TIMEOUT, f"copy of volume {name}"
    )
    await asyncio.to_thread(os.rename, staging, mount / name)


def attached_device(device: Path) -> Path:
    if not device.exists():
        raise VolumeMissing(f"device {device} not found (is the volume attached?)")
    return device.resolve()


def lock(backing: Path, flags: int) -> int | None:
    """An open descriptor of `backing` holding the flock `flags` ask for; None when a
    non-blocking lock is held by someone else."""
    fd = os.open(backing, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, flags)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_sparse(backing: Path, size_gb: int) -> None:
    """Creates the loop file when absent (a new local volume); an existing one is kept
    as it is, whatever its size."""
    backing.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(backing, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    try:
        os.ftruncate(fd, size_gb * 2**30)
    finally:
        os.close(fd)


def grow_sparse(backing: Path, size_gb: int) -> int:
    """Grows the loop file to `size_gb` when it is smaller; a larger one stays as it is
    (a volume is never shrunk: its file system fills it). Returns its size in bytes."""
    size, now = size_gb * 2**30, backing.stat().st_size
    if now >= size:
        return now
    os.truncate(backing, size)
    return size


def device_size(device: Path) -> int:
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def tenant_dir(mount: Path, name: str, uid: int, gid: int) -> None:
    """`<mount>/<name>` as a real directory (never a link), owned by uid:gid 0700 when
    made here; one the tenant already owns is left as it is."""
    if name in ("", ".", "..") or "/" in name:
        raise VolumeError(f"volume name {name!r} is not a plain name")
    fd = os.open(mount, _DIR_FLAGS)
    try:
        try:
            os.mkdir(name, 0o700, dir_fd=fd)
        except FileExistsError:
            pass
        try:
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
        except OSError:
            raise VolumeError(f"{name} on the volume is not a directory") from None
        try:
            if os.fstat(child).st_uid == 0 and uid != 0:
                os.fchown(child, uid, gid)
                os.fchmod(child, 0o700)
        finally:
            os.close(child)
    finally:
        os.close(fd)
