"""Block volumes that hold tenants' state (issue 13): find, format if blank, mount, release.

Contract: `BlockVolumes.ensure(spec)` returns the mount point `<mounts>/<volume id>` only
once the volume's device is mounted there (ext4); it is idempotent (a mount already in
place, per /proc/self/mountinfo, is checked to be this device and kept). The device is
a Hetzner `/dev/disk/by-id/...` path, or `loop:<name>`: a sparse file
`<loop dir>/<name>.img` of `size_gb`, attached with `losetup --find --show` unless
`losetup -j` finds it attached already (an agent restart never attaches it twice).
`format_decision` is the one rule for formatting: mkfs.ext4 runs only when blkid finds
no signature at all AND the device's first MiB is zeros; any signature (a file system of
another type, a partition table, an ambiguous probe) is refused and left untouched.
`tenant_dirs` makes `<mount>/<volume name>` for each of the spec's named volumes (owned
by the container's user, 0700, only on a mounted volume, never through a link), first
copying in the user's Docker volume of that name when there is one and the directory is
new (a user moving from Docker volumes keeps its state; the Docker volume is kept).
`release(keep)` unmounts every volume under `<mounts>` whose id is not in `keep`, and
detaches the loop devices backing files in the loop dir that nothing mounts, so the
control plane can detach the volume. Nothing here ever deletes a volume's data or file.
Agents may share a loop dir (two local workers on one machine): an agent holds an
exclusive flock on a loop file from attaching its loop device until it is mounted, and
detaches an idle loop device only while it holds that lock itself (never blocking for
it), so one agent never detaches, and the kernel never hands to another file, a device
another agent is about to format or mount.

Every command runs as a subprocess with an explicit timeout (killed when it passes), off
the event loop. Failures are `VolumeError` (`state` "error") or `VolumeMissing` (`state`
"missing"), with a one-line message fit for the user's error field: no control
characters, at most MAX_VOLUME_ERROR characters, never a secret (none is involved).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import shutil
import stat
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

from agent.errors import AgentError
from shared.protocol import MAX_VOLUME_ERROR, BlockVolumeSpec, VolumeReport, VolumeState

LABEL_VOLUME = "clawfleet.volume"  # on a container: the block volume it uses
LOOP_PREFIX = "loop:"
LOOP_MAJOR = 7
HEAD_BYTES = 1 << 20  # what must be zeros, besides blkid's verdict, before a format
PROBE_TIMEOUT = 30.0
MKFS_TIMEOUT = 600.0
MOUNT_TIMEOUT = 120.0
COPY_TIMEOUT = 3600.0  # adopting a Docker volume's content (tenant_dirs)
MOUNT_OPTIONS = "nodev,nosuid"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class VolumeError(AgentError):
    """The volume exists but cannot be attached, checked or mounted."""

    code = "volume_error"
    state: VolumeState = "error"

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class VolumeMissing(VolumeError):
    """The volume's device is not on this worker (not attached yet, or gone)."""

    code = "volume_missing"
    state: VolumeState = "missing"


def one_line(text: str, limit: int = MAX_VOLUME_ERROR) -> str:
    """`text` as one printable line of at most `limit` characters (a command's stderr
    goes into the user's error field)."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# -- pure decisions ---------------------------------------------------------------------


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


# -- commands ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str


async def run(argv: Sequence[str], limit: float) -> Result:
    """Runs a command with stdin closed; kills it when `limit` seconds pass."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        raise VolumeError(f"{argv[0]} is not installed on this worker") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise VolumeError(f"{argv[0]} did not finish within {limit:g}s") from None
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


async def checked(argv: Sequence[str], limit: float, what: str) -> str:
    result = await run(argv, limit)
    if result.rc != 0:
        raise VolumeError(f"{what} failed: {result.err.strip() or f'status {result.rc}'}")
    return result.out


def _head_is_zero(device: Path) -> bool:
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return not os.read(fd, HEAD_BYTES).strip(b"\0")
    finally:
        os.close(fd)


def _rdev(device: Path) -> str:
    info = os.stat(device)
    if not stat.S_ISBLK(info.st_mode):
        raise VolumeError(f"{device} is not a block device")
    return f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}"


def _read_mountinfo() -> list[MountEntry]:
    return parse_mountinfo(Path("/proc/self/mountinfo").read_text())


# -- the volumes of one agent -----------------------------------------------------------


@dataclass
class BlockVolumes:
    mounts: Path  # <STATE_DIR>/mounts
    loop_dir: Path  # where loop:<name> files live
    # Volume id -> the last failure of `ensure` or `release`, for the heartbeat.
    failures: dict[str, VolumeError] = field(default_factory=dict)

    def loop_file(self, spec: BlockVolumeSpec) -> Path | None:
        if not spec.device.startswith(LOOP_PREFIX):
            return None
        return self.loop_dir / f"{spec.device.removeprefix(LOOP_PREFIX)}.img"

    def target(self, volume_id: str) -> Path:
        return self.mounts / volume_id

    async def ensure(self, spec: BlockVolumeSpec) -> Path:
        try:
            target = await self._ensure(spec)
        except VolumeError as exc:
            self.failures[spec.id] = exc
            raise
        except OSError as exc:
            failure = VolumeError(f"volume {spec.id}: {exc.strerror or exc}")
            self.failures[spec.id] = failure
            raise failure from None
        self.failures.pop(spec.id, None)
        return target

    async def _ensure(self, spec: BlockVolumeSpec) -> Path:
        backing = self.loop_file(spec)
        if backing is None:
            return await self._mount(spec)
        await asyncio.to_thread(_create_sparse, backing, spec.size_gb)
        fd = await asyncio.to_thread(_lock, backing, fcntl.LOCK_EX)
        assert fd is not None  # a blocking lock is taken or raises
        try:
            return await self._mount(spec)
        finally:
            os.close(fd)

    async def _mount(self, spec: BlockVolumeSpec) -> Path:
        device = await self._device(spec)
        rdev = _rdev(device)
        target = self.target(spec.id)
        current = mounted_at(await asyncio.to_thread(_read_mountinfo), target)
        if current is not None:
            if current.device != rdev or current.root != "/":
                raise VolumeError(f"{target} has another file system mounted on it")
            return target
        await self._format_if_blank(device)
        await asyncio.to_thread(lambda: target.mkdir(parents=True, exist_ok=True, mode=0o700))
        await checked(
            ["mount", "-t", "ext4", "-o", MOUNT_OPTIONS, str(device), str(target)],
            MOUNT_TIMEOUT,
            f"mount of volume {spec.id}",
        )
        return target

    async def _device(self, spec: BlockVolumeSpec) -> Path:
        backing = self.loop_file(spec)
        if backing is None:
            return await asyncio.to_thread(_attached_device, Path(spec.device))
        await asyncio.to_thread(_create_sparse, backing, spec.size_gb)
        attached = await self.loop_devices_of(backing)
        if attached:
            return attached[0]
        out = await checked(["losetup", "--find", "--show", str(backing)], PROBE_TIMEOUT, "losetup")
        return Path(out.strip())

    async def loop_devices_of(self, backing: Path) -> list[Path]:
        """Loop devices attached to `backing` (`losetup -j`), oldest first."""
        out = await checked(["losetup", "-j", str(backing)], PROBE_TIMEOUT, "losetup -j")
        return sorted(
            (Path(line.split(":", 1)[0]) for line in out.splitlines() if ":" in line),
            key=lambda p: int(p.name.removeprefix("loop") or 0),
        )

    async def _format_if_blank(self, device: Path) -> None:
        probe = await run(["blkid", "-p", "-o", "export", str(device)], PROBE_TIMEOUT)
        head_zero = await asyncio.wait_for(asyncio.to_thread(_head_is_zero, device), PROBE_TIMEOUT)
        decision = format_decision(probe.rc, probe.out, head_zero)
        if decision.action == "refuse":
            raise VolumeError(f"{device}: {decision.reason}; left untouched")
        if decision.action == "format":
            await checked(["mkfs.ext4", "-q", "-m", "0", str(device)], MKFS_TIMEOUT, "mkfs.ext4")

    async def tenant_dirs(
        self,
        spec: BlockVolumeSpec,
        names: Iterable[str],
        uid: int,
        gid: int,
        adopt: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """Name -> `<mount>/<name>` for bind mounts, made on the mounted volume. A
        directory not there yet is first made a copy of `adopt[name]` when given (the
        user's Docker volume on this worker from before it had a block volume), so a
        user moving onto a block volume never starts empty."""
        target = self.target(spec.id)
        entries = await asyncio.to_thread(_read_mountinfo)
        if mounted_at(entries, target) is None:
            raise VolumeError(f"volume {spec.id} is not mounted")
        dirs = {}
        for name in names:
            source = (adopt or {}).get(name)
            if source is not None and not await asyncio.to_thread(os.path.lexists, target / name):
                await _copy_in(Path(source), target, name)
            await asyncio.to_thread(_tenant_dir, target, name, uid, gid)
            dirs[name] = str(target / name)
        return dirs

    async def release(
        self, keep: Collection[BlockVolumeSpec], in_use: Collection[str]
    ) -> list[str]:
        """Unmounts every held volume neither in `keep` (the desired ones) nor in
        `in_use` (ids some container still uses) and detaches idle loop devices of the
        loop dir but those of `keep`; returns the ids unmounted. A failure is kept for
        the heartbeat and retried on the next call."""
        kept = {v.id for v in keep} | set(in_use)
        released = []
        entries = await asyncio.to_thread(_read_mountinfo)
        for volume_id, entry in sorted(held(entries, self.mounts).items()):
            if volume_id in kept:
                continue
            try:
                await checked(
                    ["umount", entry.target], MOUNT_TIMEOUT, f"unmount of volume {volume_id}"
                )
            except VolumeError as exc:
                self.failures[volume_id] = exc
                continue
            self.failures.pop(volume_id, None)
            released.append(volume_id)
        await self._detach_idle_loops({self.loop_file(v) for v in keep})
        return released

    async def _detach_idle_loops(self, keep: Collection[Path | None]) -> None:
        if not self.loop_dir.is_dir():
            return
        out = await checked(["losetup", "--list", "--json"], PROBE_TIMEOUT, "losetup --list")
        try:
            loops = json.loads(out or "{}").get("loopdevices") or []
        except ValueError:
            raise VolumeError("losetup --list printed no JSON") from None
        for loop in loops:
            back = str(loop.get("back-file") or "").removesuffix(" (deleted)")
            if Path(back).parent != self.loop_dir or Path(back) in keep:
                continue  # not one of ours, or wanted
            try:
                fd = await asyncio.to_thread(_lock, Path(back), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # the file is gone: nothing to hold the device for
            if fd is None:
                continue  # an agent is attaching or mounting it right now
            try:
                await self._detach_if_unmounted(loop["name"])
            finally:
                os.close(fd)

    async def _detach_if_unmounted(self, name: str) -> None:
        in_use = {e.device for e in await asyncio.to_thread(_read_mountinfo)}
        try:
            if _rdev(Path(name)) in in_use:
                return
        except (OSError, VolumeError):
            return
        await checked(["losetup", "-d", name], PROBE_TIMEOUT, "losetup -d")

    async def reports(self, desired: Iterable[BlockVolumeSpec]) -> list[VolumeReport]:
        """One report per desired volume and per volume still held."""
        mounts = held(await asyncio.to_thread(_read_mountinfo), self.mounts)
        out: dict[str, VolumeReport] = {}
        for spec in desired:
            failure = self.failures.get(spec.id)
            if spec.id in mounts:
                out[spec.id] = VolumeReport(spec.id, "mounted")
            elif failure is not None:
                out[spec.id] = VolumeReport(spec.id, failure.state, failure.message)
            else:
                out[spec.id] = VolumeReport(spec.id, "missing", "not mounted yet")
        for volume_id in mounts.keys() - out.keys():
            failure = self.failures.get(volume_id)
            out[volume_id] = VolumeReport(volume_id, "mounted", failure.message if failure else "")
        return [out[k] for k in sorted(out)]


async def _copy_in(source: Path, mount: Path, name: str) -> None:
    """`<mount>/<name>` becomes a copy of `source` (owners, modes and links kept, never
    followed), all at once: the copy is made aside and renamed into place, so a copy cut
    short is made again from the start rather than taken for the data."""
    staging = mount / f".{name}.adopting"
    await asyncio.to_thread(shutil.rmtree, staging, True)  # a cut-short copy, not data
    await checked(
        ["cp", "-a", "--", f"{source}/.", str(staging)], COPY_TIMEOUT, f"copy of volume {name}"
    )
    await asyncio.to_thread(os.rename, staging, mount / name)


def _attached_device(device: Path) -> Path:
    if not device.exists():
        raise VolumeMissing(f"device {device} not found (is the volume attached?)")
    return device.resolve()


def _lock(backing: Path, flags: int) -> int | None:
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


def _create_sparse(backing: Path, size_gb: int) -> None:
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


def _tenant_dir(mount: Path, name: str, uid: int, gid: int) -> None:
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


def volume_labels(spec: BlockVolumeSpec | None) -> Mapping[str, str]:
    """The container label that says which block volume it uses (release keeps it)."""
    return {LABEL_VOLUME: spec.id} if spec is not None else {}
