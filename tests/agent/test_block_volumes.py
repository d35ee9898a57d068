"""The agent's block volumes (agent/volumes.py): the format rule as a table, and the
mount path for real: sparse files, loop devices, blkid, mkfs.ext4, mount and umount.
Every loop device and mount a test makes is undone by the `volumes` fixture, pass or fail.
"""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.mountinfo import mounted_at, parse_mountinfo
from agent.volume_commands import VolumeError, VolumeMissing, one_line
from agent.volume_files import create_sparse, lock
from agent.volume_format import Decision, format_decision
from agent.volume_grow import superblock_bytes
from agent.volumes import BlockVolumes
from shared.protocol import MAX_VOLUME_ERROR, BlockVolumeSpec, VolumeReport

EXT4 = "DEVNAME=/dev/loop3\nUUID=0b6e\nVERSION=1.0\nTYPE=ext4\nUSAGE=filesystem\n"


@pytest.mark.parametrize(
    ("rc", "export", "head_zero", "decision"),
    [
        (2, "", True, Decision("format")),
        (2, "", False, Decision("refuse", "no known file system but the device is not blank")),
        (0, EXT4, True, Decision("mount")),
        (0, EXT4, False, Decision("mount")),
        (0, "TYPE=xfs\nUSAGE=filesystem\n", False, Decision("refuse", "holds a xfs file system, not a bare ext4 volume")),
        (0, "TYPE=ext2\n", False, Decision("refuse", "holds a ext2 file system, not a bare ext4 volume")),
        (0, "PTTYPE=gpt\nPTUUID=a1\n", False, Decision("refuse", "holds a partition table, not a bare ext4 volume")),
        (0, EXT4 + "PTTYPE=dos\n", False, Decision("refuse", "holds a ext4 file system and a partition table, not a bare ext4 volume")),
        (0, "TYPE=crypto_LUKS\n", False, Decision("refuse", "holds a crypto_LUKS file system, not a bare ext4 volume")),
        (0, "USAGE=other\n", True, Decision("refuse", "holds a signature, not a bare ext4 volume")),
        # A found signature is never "blank", whatever else is said.
        (2, "TYPE=ext4\n", True, Decision("refuse", "blkid could not tell what the device holds (status 2)")),
        (8, "", True, Decision("refuse", "blkid could not tell what the device holds (status 8)")),
        (4, "", True, Decision("refuse", "blkid could not tell what the device holds (status 4)")),
    ],
)  # fmt: skip
def test_format_only_a_blank_device(
    rc: int, export: str, head_zero: bool, decision: Decision
) -> None:
    assert format_decision(rc, export, head_zero) == decision


DUMPE2FS = "Filesystem volume name:   <none>\nBlock count:              262144\nBlock size:               4096\n"


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (DUMPE2FS, 2**30),
        (DUMPE2FS.replace("4096", "1024"), 2**28),
        ("Block count: 10\n", None),  # no block size
        ("Block count: many\nBlock size: 4096\n", None),
        ("", None),
    ],
)
def test_the_superblock_says_the_file_systems_size(text: str, size: int | None) -> None:
    if size is None:
        with pytest.raises(VolumeError, match="dumpe2fs printed no block count and size"):
            superblock_bytes(text)
    else:
        assert superblock_bytes(text) == size


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 7:3 / /var/lib/clawfleet/mounts/v1 rw,nosuid,nodev - ext4 /dev/loop3 rw
41 22 7:4 /sub /var/lib/clawfleet/mounts/v2 rw - ext4 /dev/loop4 rw
42 22 0:50 / /var/lib/clawfleet/mounts/with\\040space rw - tmpfs tmpfs rw
43 40 7:5 / /var/lib/clawfleet/mounts/v1 rw - ext4 /dev/loop5 rw
broken line
"""


@pytest.mark.parametrize(
    ("target", "device"),
    [
        ("/var/lib/clawfleet/mounts/v1", "7:5"),  # the topmost of two
        ("/var/lib/clawfleet/mounts/v2", "7:4"),
        ("/var/lib/clawfleet/mounts/with space", "0:50"),
        ("/var/lib/clawfleet/mounts/v3", None),
        ("/var/lib/clawfleet/mounts", None),
    ],
)
def test_mountinfo(target: str, device: str | None) -> None:
    entry = mounted_at(parse_mountinfo(MOUNTINFO), Path(target))
    assert (entry.device if entry else None) == device


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("mount: /x: wrong fs type.\n  dmesg(1) may have more\n", "mount: /x: wrong fs type. dmesg(1) may have more"),
        ("\x1b[31mred\x1b[0m\ttab", "[31mred [0m tab"),
        ("x" * 1000, "x" * (MAX_VOLUME_ERROR - 1) + "…"),
    ],
)  # fmt: skip
def test_errors_are_one_safe_line(text: str, line: str) -> None:
    assert one_line(text) == line
    assert VolumeError(text).message == line


# -- for real ----------------------------------------------------------------------------


def _mounts_under(root: Path) -> list[str]:
    return [
        e.target
        for e in parse_mountinfo(Path("/proc/self/mountinfo").read_text())
        if e.target.startswith(str(root))
    ]


def _loops_of(directory: Path) -> list[str]:
    out = subprocess.run(
        ["losetup", "-n", "-O", "NAME,BACK-FILE", "--list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split()[0] for line in out.splitlines() if str(directory) in line]


@pytest.fixture
def volumes(tmp_path: Path) -> Iterator[BlockVolumes]:
    made = BlockVolumes(tmp_path / "mounts", tmp_path / "loops")
    try:
        yield made
    finally:
        for target in reversed(_mounts_under(tmp_path)):
            subprocess.run(["umount", "-l", target], check=False)
        for loop in _loops_of(tmp_path / "loops"):
            subprocess.run(["losetup", "-d", loop], check=False)
        assert not _mounts_under(tmp_path)
        assert not _loops_of(tmp_path / "loops")


def loop(name: str, size_gb: int = 1) -> BlockVolumeSpec:
    return BlockVolumeSpec(id=name, device=f"loop:{name}", size_gb=size_gb)


def blkid_type(device: str) -> str:
    return subprocess.run(
        ["blkid", "-p", "-s", "TYPE", "-o", "value", device], capture_output=True, text=True
    ).stdout.strip()


blockdev = pytest.mark.blockdev


@blockdev
async def test_a_blank_volume_is_formatted_mounted_and_keeps_its_files(
    volumes: BlockVolumes,
) -> None:
    spec = loop("v1")
    target = await volumes.ensure(spec)
    backing = volumes.loop_dir / "v1.img"
    info = os.stat(backing)
    assert info.st_size == 2**30 and info.st_blocks * 512 < 2**30  # sparse
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert _mounts_under(volumes.mounts) == [str(target)]
    (device,) = _loops_of(volumes.loop_dir)
    assert blkid_type(device) == "ext4"
    dirs = await volumes.tenant_dirs(spec, ["state"], 1000, 1000)
    assert dirs == {"state": str(target / "state")}
    made = os.stat(target / "state")
    assert (made.st_uid, made.st_gid, stat.S_IMODE(made.st_mode)) == (1000, 1000, 0o700)
    (target / "state" / "memory.md").write_text("remember me")
    assert await volumes.reports([spec]) == [VolumeReport("v1", "mounted")]

    assert await volumes.release([], in_use=()) == ["v1"]
    assert not _mounts_under(volumes.mounts) and not _loops_of(volumes.loop_dir)
    assert await volumes.reports([]) == []
    assert backing.exists()  # released, never deleted

    again = await volumes.ensure(spec)  # formatted now: mounted as it is
    assert (again / "state" / "memory.md").read_text() == "remember me"


@blockdev
async def test_ensure_is_idempotent_and_a_restarted_agent_finds_the_same_loop_device(
    volumes: BlockVolumes,
) -> None:
    spec = loop("v2")
    target = await volumes.ensure(spec)
    (first,) = _loops_of(volumes.loop_dir)
    assert await volumes.ensure(spec) == target
    restarted = BlockVolumes(volumes.mounts, volumes.loop_dir)
    assert await restarted.ensure(spec) == target
    assert _loops_of(volumes.loop_dir) == [first]
    assert _mounts_under(volumes.mounts) == [str(target)]
    assert await restarted.reports([spec]) == [VolumeReport("v2", "mounted")]  # no growth
    # Unmounted but still attached (a crash between the two): reattached to nothing new.
    subprocess.run(["umount", str(target)], check=True)
    assert await restarted.ensure(spec) == target
    assert _loops_of(volumes.loop_dir) == [first]


def _fs_gb(target: Path) -> float:
    info = os.statvfs(target)
    return info.f_blocks * info.f_frsize / 2**30


def can_resize_online() -> bool:
    """CAP_SYS_RESOURCE, which ext4's online resize asks of root (a worker's root has it;
    some sandboxes take it away)."""
    status = Path("/proc/self/status").read_text()
    effective = int(status.split("CapEff:")[1].split()[0], 16)
    return bool(effective >> 24 & 1)


@blockdev
async def test_a_bigger_size_grows_an_unmounted_volume_before_its_mount(
    volumes: BlockVolumes,
) -> None:
    """A plan with more disk, met at a mount (a new server, a restarted agent): the loop
    file and the file system the tenant sees grow first; files stay; a smaller size never
    shrinks it."""
    target = await volumes.ensure(loop("v9", 1))
    (target / "memory.md").write_text("remember me")
    assert _fs_gb(target) < 1.0
    await volumes.release([], in_use=())

    restarted = BlockVolumes(volumes.mounts, volumes.loop_dir)  # nothing remembered
    again = await restarted.ensure(loop("v9", 3))
    assert 2.5 < _fs_gb(again) < 3.0  # ext4's own overhead aside
    assert (again / "memory.md").read_text() == "remember me"
    assert await restarted.reports([loop("v9", 3)]) == [VolumeReport("v9", "mounted")]

    assert await restarted.ensure(loop("v9", 1)) == again  # never shrunk
    assert (volumes.loop_dir / "v9.img").stat().st_size == 3 * 2**30
    assert 2.5 < _fs_gb(again) < 3.0


def _provider_grows(volumes: BlockVolumes, name: str, size_gb: int) -> None:
    """What a Hetzner resize does to a mounted volume: its device grows under it."""
    os.truncate(volumes.loop_dir / f"{name}.img", size_gb * 2**30)
    (device,) = _loops_of(volumes.loop_dir)
    subprocess.run(["losetup", "-c", device], check=True)


@blockdev
@pytest.mark.skipif(not can_resize_online(), reason="no CAP_SYS_RESOURCE: no online resize")
async def test_a_mounted_volume_grows_online_with_its_spec_or_its_device(
    volumes: BlockVolumes,
) -> None:
    target = await volumes.ensure(loop("v10", 1))
    (target / "memory.md").write_text("remember me")
    (device,) = _loops_of(volumes.loop_dir)
    assert await volumes.ensure(loop("v10", 2)) == target  # a new spec: the loop file grows
    assert 1.5 < _fs_gb(target) < 2.0
    assert _loops_of(volumes.loop_dir) == [device]  # the same device, told its new size
    _provider_grows(volumes, "v10", 3)
    await volumes.grow(loop("v10", 2))  # a pass, the spec unchanged: the device grew
    assert 2.5 < _fs_gb(target) < 3.0
    assert (target / "memory.md").read_text() == "remember me"
    assert await volumes.reports([loop("v10", 2)]) == [VolumeReport("v10", "mounted")]


@blockdev
@pytest.mark.skipif(can_resize_online(), reason="online resize works here: nothing fails")
async def test_a_mounted_volume_that_cannot_grow_stays_mounted_and_says_why(
    volumes: BlockVolumes,
) -> None:
    """Without CAP_SYS_RESOURCE the online resize is refused: the tenant keeps its mounted
    volume and files, the report says why, and it grows at its next mount."""
    target = await volumes.ensure(loop("v11", 1))
    (target / "memory.md").write_text("remember me")
    (device,) = _loops_of(volumes.loop_dir)
    _provider_grows(volumes, "v11", 2)
    await volumes.grow(loop("v11", 1))  # a pass: the device grew under the mount
    assert _fs_gb(target) < 1.0 and _loops_of(volumes.loop_dir) == [device]
    (report,) = await volumes.reports([loop("v11", 1)])
    assert report.state == "mounted"
    assert report.error.startswith("growing volume v11: growing the file system failed"), report
    await volumes.release([], in_use=())
    again = await volumes.ensure(loop("v11", 2))
    assert 1.5 < _fs_gb(again) < 2.0
    assert (again / "memory.md").read_text() == "remember me"
    assert await volumes.reports([loop("v11", 2)]) == [VolumeReport("v11", "mounted")]


@blockdev
async def test_a_pass_grows_nothing_that_is_not_mounted_here(volumes: BlockVolumes) -> None:
    await volumes.grow(loop("v12", 2))  # never mounted: left to its `ensure`
    assert not (volumes.loop_dir / "v12.img").exists() and not volumes.unsized


@blockdev
@pytest.mark.parametrize(
    ("prepare", "reason"),
    [
        (["mkfs.ext2", "-q", "-F"], "holds a ext2 file system, not a bare ext4 volume"),
        (None, "no known file system but the device is not blank"),
    ],
)
async def test_a_device_with_anything_on_it_is_never_formatted(
    volumes: BlockVolumes, prepare: list[str] | None, reason: str
) -> None:
    backing = volumes.loop_dir / "v3.img"
    backing.parent.mkdir(parents=True)
    with open(backing, "wb") as fh:
        fh.truncate(64 * 2**20)
        fh.seek(4096)
        fh.write(b"customer data, no file system")
    if prepare is not None:
        subprocess.run([*prepare, str(backing)], check=True, capture_output=True)
    before = backing.read_bytes()
    with pytest.raises(VolumeError, match=reason):
        await volumes.ensure(loop("v3"))
    assert backing.read_bytes() == before
    assert not _mounts_under(volumes.mounts)
    (report,) = await volumes.reports([loop("v3")])
    assert report.state == "error" and reason in report.error


@blockdev
async def test_a_missing_device_is_reported_missing_and_nothing_is_made(
    volumes: BlockVolumes,
) -> None:
    spec = BlockVolumeSpec("4711", "/dev/disk/by-id/scsi-0HC_Volume_4711", 10)
    with pytest.raises(VolumeMissing, match="not found"):
        await volumes.ensure(spec)
    assert await volumes.reports([spec]) == [
        VolumeReport(
            "4711",
            "missing",
            "device /dev/disk/by-id/scsi-0HC_Volume_4711 not found (is the volume attached?)",
        )
    ]
    assert not (volumes.mounts / "4711").exists()
    with pytest.raises(VolumeError, match="not mounted"):
        await volumes.tenant_dirs(spec, ["state"], 1000, 1000)


@blockdev
async def test_release_keeps_what_is_desired_or_in_use(volumes: BlockVolumes) -> None:
    a, b, c = loop("a"), loop("b"), loop("c")
    for spec in (a, b, c):
        await volumes.ensure(spec)
    assert await volumes.release([a], in_use={"b"}) == ["c"]
    assert [Path(t).name for t in _mounts_under(volumes.mounts)] == ["a", "b"]
    assert len(_loops_of(volumes.loop_dir)) == 2
    assert await volumes.reports([a]) == [
        VolumeReport("a", "mounted"),
        VolumeReport("b", "mounted"),
    ]


@blockdev
async def test_a_link_planted_on_the_volume_is_refused(
    volumes: BlockVolumes, tmp_path: Path
) -> None:
    spec = loop("v4")
    target = await volumes.ensure(spec)
    outside = tmp_path / "outside"
    outside.mkdir()
    (target / "state").symlink_to(outside)
    with pytest.raises(VolumeError, match="not a directory"):
        await volumes.tenant_dirs(spec, ["state"], 1000, 1000)
    assert os.stat(outside).st_uid == 0


@blockdev
async def test_a_new_directory_adopts_a_docker_volume_once_and_whole(
    volumes: BlockVolumes, tmp_path: Path
) -> None:
    spec = loop("v5")
    target = await volumes.ensure(spec)
    source = tmp_path / "docker-volume"
    (source / "ws").mkdir(parents=True)
    (source / "ws" / "memory.md").write_text("kept")
    (source / "link").symlink_to("/etc/shadow")  # copied as a link, never followed
    (target / ".state.adopting").mkdir()  # a copy cut short by a crash: not taken as data
    (target / ".state.adopting" / "half").write_text("partial")

    await volumes.tenant_dirs(spec, ["state"], 1000, 1000, {"state": str(source)})
    state = target / "state"
    assert sorted(p.name for p in state.iterdir()) == ["link", "ws"]
    assert (state / "ws" / "memory.md").read_text() == "kept"
    assert os.readlink(state / "link") == "/etc/shadow"
    assert not (target / ".state.adopting").exists()
    # Once there, the directory is the volume's: never copied over again.
    (source / "ws" / "memory.md").write_text("newer on the old side")
    await volumes.tenant_dirs(spec, ["state"], 1000, 1000, {"state": str(source)})
    assert (state / "ws" / "memory.md").read_text() == "kept"


@blockdev
async def test_an_agent_sharing_the_loop_dir_never_detaches_a_device_another_is_mounting(
    volumes: BlockVolumes, tmp_path: Path
) -> None:
    """Two local workers share one loop dir: while one agent has attached a volume's
    loop device and not yet mounted it (mkfs can take seconds), the other's release must
    leave the device alone, or the mount fails or lands on whatever file the kernel
    hands that device to next."""
    other = BlockVolumes(tmp_path / "other-mounts", volumes.loop_dir)
    spec = loop("shared")
    backing = volumes.loop_dir / "shared.img"
    create_sparse(backing, 1)
    held = lock(backing, fcntl.LOCK_EX)  # what `ensure` holds from attach to mount
    assert held is not None
    try:
        device = await volumes._device(spec)
        await other.release([], in_use=())
        assert await volumes.loop_devices_of(backing) == [device]
    finally:
        os.close(held)
    target = await volumes.ensure(spec)  # the same device, now mounted
    await other.release([], in_use=())  # mounted: still not other's to detach
    assert await volumes.loop_devices_of(backing) == [device]
    assert mounted_at(parse_mountinfo(Path("/proc/self/mountinfo").read_text()), target)
    assert await volumes.release([], in_use=()) == ["shared"]
    assert await volumes.loop_devices_of(backing) == []  # idle and unlocked: detached
