"""Block volumes that hold tenants' state (issue 13): find, format if blank, mount, release.

Contract: `BlockVolumes.ensure(spec)` returns the mount point `<mounts>/<volume id>` only
once the volume's device is mounted there (ext4); it is idempotent (a mount already in
place, per /proc/self/mountinfo, is checked to be this device and kept). The device is
a Hetzner `/dev/disk/by-id/...` path, or `loop:<name>`: a sparse file
`<loop dir>/<name>.img` of `size_gb`, attached with `losetup --find --show` unless
`losetup -j` finds it attached already (an agent restart never attaches it twice).
A volume grows with its spec's size (a plan with more disk, control/volumes/steps.py):
a loop file smaller than `size_gb` is grown and its loop device told (`losetup -c`),
and its file system is grown to fill the device, offline before a mount or online while
mounted (agent/volume_grow.py), checked once for each device size this agent sees. A
volume that could not grow is mounted all the same, and its report says why. Nothing
here ever shrinks a volume.
`format_decision` (agent/volume_format.py) is the one rule for formatting: mkfs.ext4
runs only on a device with no signature at all and a first MiB of zeros.
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

Every command runs with an explicit timeout, off the event loop, and fails as
`VolumeError` or `VolumeMissing` with a one-line message (agent/volume_commands.py).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent import volume_grow
from agent.mountinfo import held, mounted_at, read_mountinfo
from agent.volume_commands import VolumeError, checked, one_line, run
from agent.volume_files import (
    attached_device,
    copy_in,
    create_sparse,
    device_number,
    device_size,
    grow_sparse,
    lock,
    tenant_dir,
)
from agent.volume_format import format_decision, head_is_zero
from shared.protocol import BlockVolumeSpec, VolumeReport

LABEL_VOLUME = "clawfleet.volume"  # on a container: the block volume it uses
LOOP_PREFIX = "loop:"
LOOP_MAJOR = 7
PROBE_TIMEOUT = 30.0
MKFS_TIMEOUT = 600.0
MOUNT_TIMEOUT = 120.0
MOUNT_OPTIONS = "nodev,nosuid"


@dataclass
class BlockVolumes:
    mounts: Path  # <STATE_DIR>/mounts
    loop_dir: Path  # where loop:<name> files live
    # Volume id -> the last failure of `ensure` or `release`, for the heartbeat.
    failures: dict[str, VolumeError] = field(default_factory=dict)
    # Volume id -> the device size its file system was last grown to, and why the last
    # try to grow it failed (a mounted volume's report says so).
    grown: dict[str, int] = field(default_factory=dict)
    unsized: dict[str, str] = field(default_factory=dict)

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
        await asyncio.to_thread(create_sparse, backing, spec.size_gb)
        fd = await asyncio.to_thread(lock, backing, fcntl.LOCK_EX)
        assert fd is not None  # a blocking lock is taken or raises
        try:
            return await self._mount(spec)
        finally:
            os.close(fd)

    async def _mount(self, spec: BlockVolumeSpec) -> Path:
        device = await self._device(spec)
        rdev = device_number(device)
        target = self.target(spec.id)
        current = mounted_at(await asyncio.to_thread(read_mountinfo), target)
        if current is not None:
            if current.device != rdev or current.root != "/":
                raise VolumeError(f"{target} has another file system mounted on it")
        else:
            await self._format_if_blank(device)
            await self._grow(spec, device, mounted=False)
            await asyncio.to_thread(lambda: target.mkdir(parents=True, exist_ok=True, mode=0o700))
            await checked(
                ["mount", "-t", "ext4", "-o", MOUNT_OPTIONS, str(device), str(target)],
                MOUNT_TIMEOUT,
                f"mount of volume {spec.id}",
            )
        await self._grow(spec, device, mounted=True)
        return target

    async def grow(self, spec: BlockVolumeSpec) -> None:
        """A mounted volume grown to its spec's size, for each pass: the provider's resize
        lands after the spec that asks for it, and the tenant keeps running meanwhile.
        A volume not mounted here is left to its next `ensure`."""
        entry = mounted_at(await asyncio.to_thread(read_mountinfo), self.target(spec.id))
        if entry is None or entry.root != "/":
            return
        device = Path(entry.source)
        try:
            if await asyncio.to_thread(device_number, device) != entry.device:
                return  # not the device node mountinfo names: never resize a guess
        except (OSError, VolumeError):
            return
        await self._grow(spec, device, mounted=True)

    async def _grow(self, spec: BlockVolumeSpec, device: Path, mounted: bool) -> None:
        """The volume grown to its spec's size: a loop file first (only once the device
        is known to be ours: ext4 or blank), then its file system (agent/volume_grow.py),
        checked once per device size. A failure is kept for the heartbeat and never stops
        the mount: a volume that did not grow still holds the tenant's state."""
        try:
            backing = self.loop_file(spec)
            if backing is not None:
                grown_to = await asyncio.to_thread(grow_sparse, backing, spec.size_gb)
                if await asyncio.to_thread(device_size, device) < grown_to:
                    await checked(["losetup", "-c", str(device)], PROBE_TIMEOUT, "losetup -c")
            size = await asyncio.to_thread(device_size, device)
            if self.grown.get(spec.id) == size:
                return
            await volume_grow.grow(device, size, mounted)
        except (VolumeError, OSError) as exc:
            message = exc.message if isinstance(exc, VolumeError) else str(exc)
            self.unsized[spec.id] = one_line(f"growing volume {spec.id}: {message}")
            return
        self.unsized.pop(spec.id, None)
        self.grown[spec.id] = size

    async def _device(self, spec: BlockVolumeSpec) -> Path:
        backing = self.loop_file(spec)
        if backing is None:
            return await asyncio.to_thread(attached_device, Path(spec.device))
        await asyncio.to_thread(create_sparse, backing, spec.size_gb)
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
        async with asyncio.timeout(PROBE_TIMEOUT):  # not wait_for: see agent/runtime.py
            head_zero = await asyncio.to_thread(head_is_zero, device)
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
        entries = await asyncio.to_thread(read_mountinfo)
        if mounted_at(entries, target) is None:
            raise VolumeError(f"volume {spec.id} is not mounted")
        dirs = {}
        for name in names:
            source = (adopt or {}).get(name)
            if source is not None and not await asyncio.to_thread(os.path.lexists, target / name):
                await copy_in(Path(source), target, name)
            await asyncio.to_thread(tenant_dir, target, name, uid, gid)
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
        entries = await asyncio.to_thread(read_mountinfo)
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
            self.grown.pop(volume_id, None)
            self.unsized.pop(volume_id, None)
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
                fd = await asyncio.to_thread(lock, Path(back), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # the file is gone: nothing to hold the device for
            if fd is None:
                continue  # an agent is attaching or mounting it right now
            try:
                await self._detach_if_unmounted(loop["name"])
            finally:
                os.close(fd)

    async def _detach_if_unmounted(self, name: str) -> None:
        in_use = {e.device for e in await asyncio.to_thread(read_mountinfo)}
        try:
            if device_number(Path(name)) in in_use:
                return
        except (OSError, VolumeError):
            return
        await checked(["losetup", "-d", name], PROBE_TIMEOUT, "losetup -d")

    async def reports(self, desired: Iterable[BlockVolumeSpec]) -> list[VolumeReport]:
        """One report per desired volume and per volume still held."""
        mounts = held(await asyncio.to_thread(read_mountinfo), self.mounts)
        out: dict[str, VolumeReport] = {}
        for spec in desired:
            failure = self.failures.get(spec.id)
            if spec.id in mounts:
                out[spec.id] = VolumeReport(spec.id, "mounted", self.unsized.get(spec.id, ""))
            elif failure is not None:
                out[spec.id] = VolumeReport(spec.id, failure.state, failure.message)
            else:
                out[spec.id] = VolumeReport(spec.id, "missing", "not mounted yet")
        for volume_id in mounts.keys() - out.keys():
            failure = self.failures.get(volume_id)
            out[volume_id] = VolumeReport(volume_id, "mounted", failure.message if failure else "")
        return [out[k] for k in sorted(out)]


def volume_labels(spec: BlockVolumeSpec | None) -> Mapping[str, str]:
    """The container label that says which block volume it uses (release keeps it)."""
    return {LABEL_VOLUME: spec.id} if spec is not None else {}
