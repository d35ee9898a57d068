"""Block volumes end to end on the real Docker engine (issue 13): the reconciler and the
daemon's heartbeat with real loop devices, mkfs and mount, driven with specs directly
as test_reconcile_docker.py does (the control plane's volume specs are built by
control/volumes/, tested on that side). A file written in the container survives its
removal and re-creation; a missing device means no container and a `missing` report.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import msgspec
import pytest

from agent.config import load_settings
from agent.daemon import Daemon
from agent.mountinfo import parse_mountinfo
from agent.ownership import Owner
from agent.reconcile import Reconciler
from agent.volumes import LABEL_VOLUME
from shared.protocol import Assignments, BlockVolumeSpec, ContainerSpec, VolumeReport
from tests.agent.conftest import GOOD, new_user
from tests.agent.specs import make_spec
from tests.agent.test_block_volumes import can_resize_online
from tests.agent.test_e2e import until

pytestmark = [pytest.mark.docker, pytest.mark.blockdev]


def _mounts_under(root: Path) -> list[str]:
    entries = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    return [e.target for e in entries if e.target.startswith(str(root))]


async def _no_loops(directory: Path) -> bool:
    return not _loops_of(directory)


def _loops_of(directory: Path) -> list[str]:
    out = subprocess.run(
        ["losetup", "-n", "-O", "NAME,BACK-FILE", "--list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split()[0] for line in out.splitlines() if str(directory) in line]


@pytest.fixture
def state_dir(tmp_path: Path, users: list[str]) -> Iterator[Path]:
    """The agent's STATE_DIR; afterwards (pass or fail) the users' containers go first
    (the `users` fixture, torn down after this one), then every mount and loop device."""
    state = tmp_path / "state"
    try:
        yield state
    finally:
        for target in reversed(_mounts_under(tmp_path)):
            subprocess.run(["umount", "-l", target], check=False)
        for loop in _loops_of(state / "volumes"):
            subprocess.run(["losetup", "-d", loop], check=False)


@pytest.fixture
async def daemon(state_dir: Path, test_images: dict[str, str]) -> AsyncIterator[Daemon]:
    """The agent's own wiring (agent/daemon.py), registered as a fresh worker; nothing
    talks to a control plane: passes and heartbeats are called directly."""
    settings = load_settings(
        {
            "CONTROL_URL": "http://127.0.0.1:9",
            "STATE_DIR": str(state_dir),
            "TRAEFIK_DYNAMIC_DIR": str(state_dir.parent / "traefik"),
            "STOP_GRACE": "1",
        }
    )
    made = Daemon(settings)
    made.reconciler.owner = Owner(f"srv-{uuid.uuid4().hex[:12]}")
    try:
        yield made
    finally:
        await made.reconciler.close()
        await made.client.close()
        made.runtime.close()


def with_volume(spec: ContainerSpec, volume: BlockVolumeSpec) -> ContainerSpec:
    return msgspec.structs.replace(spec, volume=volume, spec_hash=spec.spec_hash[:-8] + "b10cb10c")


def containers_of(
    dclient: docker.DockerClient, user: str
) -> list[docker.models.containers.Container]:
    return dclient.containers.list(all=True, filters={"label": f"clawfleet.user={user}"})


async def reconcile(rec: Reconciler, generation: int, *specs: ContainerSpec) -> None:
    await rec.reconcile(Assignments(generation=generation, containers=list(specs)))


async def running_on_a_volume(
    rec: Reconciler, users: list[str]
) -> tuple[str, BlockVolumeSpec, ContainerSpec]:
    """A new user's container, reconciled onto a 1 GB loop volume: (user, volume, spec)."""
    user = new_user()
    users.append(user)
    volume = BlockVolumeSpec(id=f"vol-{user}", device=f"loop:{user}", size_gb=1)
    spec = with_volume(make_spec(user, GOOD), volume)
    await reconcile(rec, 1, spec)
    return user, volume, spec


async def test_state_survives_the_container_on_its_volume(
    daemon: Daemon, state_dir: Path, dclient: docker.DockerClient, users: list[str]
) -> None:
    rec = daemon.reconciler
    user, volume, spec = await running_on_a_volume(rec, users)

    [c] = containers_of(dclient, user)
    assert c.attrs["State"]["Running"] is True and c.labels[LABEL_VOLUME] == volume.id
    [mount] = c.attrs["Mounts"]
    target = state_dir / "mounts" / volume.id
    assert (mount["Type"], mount["Source"], mount["Destination"]) == (
        "bind",
        str(target / f"clawfleet-{user}-state"),
        "/data",
    )
    assert not dclient.volumes.list(filters={"label": f"clawfleet.user={user}"})  # no named one
    assert (await daemon._build_heartbeat()).volumes == [VolumeReport(volume.id, "mounted")]
    code, out = c.exec_run(["/bin/busybox", "sh", "-c", "echo kept > /data/memory.md && id -u"])
    assert (code, out.strip()) == (0, b"1000")

    # The user leaves this worker: container gone, volume unmounted, loop detached.
    await reconcile(rec, 2)
    assert not containers_of(dclient, user)
    assert not _mounts_under(state_dir)
    # `losetup -d` of a device the kernel still holds for a moment only marks it for
    # clearing: it goes when released, so wait for that, boundedly.
    await until(lambda: _no_loops(state_dir / "volumes"), "the loop device detached", 10)
    assert (await daemon._build_heartbeat()).volumes == []
    assert (state_dir / "volumes" / f"{user}.img").exists()

    await reconcile(rec, 3, spec)  # and comes back: a new container on the same data
    [again] = containers_of(dclient, user)
    assert again.id != c.id
    code, out = again.exec_run(["/bin/busybox", "cat", "/data/memory.md"])
    assert (code, out) == (0, b"kept\n")


async def test_a_missing_device_means_no_container_and_a_missing_report(
    daemon: Daemon, state_dir: Path, dclient: docker.DockerClient, users: list[str]
) -> None:
    user = new_user()
    users.append(user)
    volume = BlockVolumeSpec(id="4712", device="/dev/disk/by-id/scsi-0HC_Volume_4712", size_gb=10)
    await reconcile(daemon.reconciler, 1, with_volume(make_spec(user, GOOD), volume))

    assert not containers_of(dclient, user)
    assert not (state_dir / "mounts" / "4712").exists()
    beat = await daemon._build_heartbeat()
    missing = "device /dev/disk/by-id/scsi-0HC_Volume_4712 not found (is the volume attached?)"
    assert beat.volumes == [VolumeReport("4712", "missing", missing)]
    [report] = [r for r in beat.containers if r.user_id == user]
    assert (report.state, report.error) == ("failed", missing)
    # Retried on later passes (after the backoff), still never created.
    daemon.reconciler._failures.clear()
    await reconcile(daemon.reconciler, 1, with_volume(make_spec(user, GOOD), volume))
    assert not containers_of(dclient, user)


async def test_a_device_that_appears_after_its_spec_is_mounted_within_the_backoff(
    state_dir: Path,
    test_images: dict[str, str],
    dclient: docker.DockerClient,
    users: list[str],
    tmp_path: Path,
) -> None:
    """A move's spec can reach the new worker a moment before the provider finishes the
    attach, so the first pass finds no device. The next pass comes when that failure is
    due again, not RECONCILE_INTERVAL later (bench/volume_move_hetzner.py saw 3-30 s lost
    per move): with a 600 s interval the container runs soon after the device appears."""
    user = new_user()
    users.append(user)
    settings = load_settings(
        {
            "CONTROL_URL": "http://127.0.0.1:9",
            "STATE_DIR": str(state_dir),
            "TRAEFIK_DYNAMIC_DIR": str(state_dir.parent / "traefik"),
            "STOP_GRACE": "1",
            "RECONCILE_INTERVAL": "600",
            "BACKOFF_BASE": "0.5",
            "BACKOFF_MAX": "2",
        }
    )
    made = Daemon(settings)
    made.reconciler.owner = Owner(f"srv-{uuid.uuid4().hex[:12]}")
    vid = str(980_000_000 + uuid.uuid4().int % 10_000_000)  # no real or bench volume's id
    link = Path(f"/dev/disk/by-id/scsi-0HC_Volume_{vid}")
    volume = BlockVolumeSpec(id=vid, device=str(link), size_gb=1)
    desired = Assignments(generation=1, containers=[with_volume(make_spec(user, GOOD), volume)])
    passes_begun: list[int] = []
    made.reconciler.on_specs = lambda specs: passes_begun.append(len(specs))
    backing = tmp_path / "attached.img"
    with open(backing, "wb") as f:
        f.truncate(1024**3)
    made_dirs = [d for d in (link.parent.parent, link.parent) if not d.exists()]
    loop = ""
    passes = asyncio.create_task(made._reconcile_loop())
    try:
        # The loop's first pass has nothing to do, and the loop sleeps its interval; the
        # spec then comes with the long-poll's own pass, as a move's does.
        await until(
            lambda: asyncio.sleep(0, passes_begun and not made.reconciler._lock.locked()),
            "the loop's first pass",
        )
        await made.reconciler.reconcile(desired)
        assert "not found (is the volume attached?)" in made.reconciler.errors[user]
        loop = subprocess.run(
            ["losetup", "--find", "--show", str(backing)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(loop)

        async def running() -> bool:
            found = containers_of(dclient, user)
            return bool(found) and found[0].attrs["State"]["Running"] is True

        await until(running, "the container on its volume", timeout=60)
        assert _mounts_under(state_dir) == [str(state_dir / "mounts" / vid)]
    finally:
        passes.cancel()
        await asyncio.gather(passes, return_exceptions=True)
        for c in containers_of(dclient, user):
            c.remove(force=True)
        for target in reversed(_mounts_under(state_dir)):
            subprocess.run(["umount", "-l", target], check=False)
        link.unlink(missing_ok=True)
        for d in reversed(made_dirs):
            with contextlib.suppress(OSError):
                d.rmdir()
        if loop:
            subprocess.run(["losetup", "-d", loop], check=False)
        await made.reconciler.close()
        await made.client.close()
        made.runtime.close()


async def test_a_stopped_container_is_not_started_until_its_volume_is_back(
    daemon: Daemon, state_dir: Path, dclient: docker.DockerClient, users: list[str]
) -> None:
    """After a reboot Docker has the container but the mount is gone: the agent mounts
    the volume again before it starts the container, never on the empty directory."""
    user = new_user()
    users.append(user)
    volume = BlockVolumeSpec(id=f"vol-{user}", device=f"loop:{user}", size_gb=1)
    spec = with_volume(make_spec(user, GOOD), volume)
    await reconcile(daemon.reconciler, 1, spec)
    [c] = containers_of(dclient, user)
    c.exec_run(["/bin/busybox", "sh", "-c", "echo kept > /data/memory.md"])
    c.stop(timeout=1)
    target = state_dir / "mounts" / volume.id
    subprocess.run(["umount", str(target)], check=True)

    await reconcile(daemon.reconciler, 1, spec)
    c.reload()
    assert c.attrs["State"]["Running"] is True
    assert _mounts_under(state_dir) == [str(target)]
    assert c.exec_run(["/bin/busybox", "cat", "/data/memory.md"]).output == b"kept\n"


async def test_a_user_moving_onto_a_block_volume_keeps_its_docker_volume_state(
    daemon: Daemon, state_dir: Path, dclient: docker.DockerClient, users: list[str]
) -> None:
    """The first spec with a volume replaces a container on Docker volumes: the new one
    starts with a copy of them (made once the old one stopped), never empty."""
    user = new_user()
    users.append(user)
    plain = make_spec(user, GOOD)
    await reconcile(daemon.reconciler, 1, plain)
    [old] = containers_of(dclient, user)
    # Written from the host: a fresh Docker volume's root is root's, as Docker makes it.
    data = Path(dclient.volumes.get(f"clawfleet-{user}-state").attrs["Mountpoint"])
    (data / "ws").mkdir(mode=0o755)
    (data / "ws" / "memory.md").write_text("kept\n")
    for path in (data / "ws", data / "ws" / "memory.md"):
        os.chown(path, 1000, 1000)
    assert old.attrs["State"]["Running"] is True

    volume = BlockVolumeSpec(id=f"vol-{user}", device=f"loop:{user}", size_gb=1)
    await reconcile(daemon.reconciler, 2, with_volume(plain, volume))
    [new] = containers_of(dclient, user)
    assert new.id != old.id and new.attrs["Mounts"][0]["Type"] == "bind"
    assert new.exec_run(["/bin/busybox", "cat", "/data/ws/memory.md"]).output == b"kept\n"
    code, out = new.exec_run(["/bin/busybox", "stat", "-c", "%u:%g %a", "/data", "/data/ws"])
    assert (code, out.split(b"\n")[:2]) == (0, [b"1000:1000 700", b"1000:1000 755"])
    copied = state_dir / "mounts" / volume.id / f"clawfleet-{user}-state"
    assert sorted(p.name for p in copied.parent.iterdir()) == [
        "clawfleet-" + user + "-state",
        "lost+found",
    ]
    # The Docker volume is kept as it was (its data is never deleted here).
    [kept] = dclient.volumes.list(filters={"label": f"clawfleet.user={user}"})
    assert kept.name == f"clawfleet-{user}-state"


async def test_a_pass_grows_a_running_users_volume_without_a_restart(
    daemon: Daemon, state_dir: Path, dclient: docker.DockerClient, users: list[str]
) -> None:
    """The provider grew the volume under a running tenant (a plan with more disk): the
    next pass grows its file system online, where root may (CAP_SYS_RESOURCE), and says
    why not where it may not; the container is never replaced for it."""
    rec = daemon.reconciler
    user, volume, spec = await running_on_a_volume(rec, users)
    [before] = containers_of(dclient, user)
    os.truncate(state_dir / "volumes" / f"{user}.img", 2 * 2**30)  # the provider's resize
    [device] = _loops_of(state_dir / "volumes")
    subprocess.run(["losetup", "-c", device], check=True)

    await reconcile(rec, 2, spec)
    [after] = containers_of(dclient, user)
    assert after.id == before.id and after.attrs["State"]["Running"] is True
    [report] = (await daemon._build_heartbeat()).volumes
    target = os.statvfs(state_dir / "mounts" / volume.id)
    if can_resize_online():
        assert target.f_blocks * target.f_frsize > 1.5 * 2**30 and report.error == ""
    else:
        assert target.f_blocks * target.f_frsize < 2**30
        assert report.state == "mounted" and "growing the file system failed" in report.error
