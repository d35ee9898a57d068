"""The agent's side of the backup edges (docs/backups.md), with the real restic, the
real S3 server (tests/s3server.py), real loop-mounted ext4 volumes and a real agent
restart: a job describes its volume, so a restore whose user's spec is withheld mounts
it even after the restarted agent unmounted it; a snapshot's retention reports the
snapshots the repository kept."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from aiohttp import web

from agent.backup_jobs import BackupJobs, kept_ids
from agent.backups import Restic
from agent.config import load_settings
from agent.daemon import Daemon
from agent.ownership import Owner
from agent.runtime import DockerRuntime
from agent.state import Credentials
from shared.protocol import MAX_KEPT, Assignments, BackupJob, BlockVolumeSpec
from tests.agent.conftest import new_user
from tests.agent.test_backup_jobs import (  # noqa: F401 (s3, volume: fixtures)
    Plane,
    job,
    needs_restic,
    real_job,
    repo_of,
    s3,
    tree,
    volume,
    volumes_mounted,
)
from tests.agent.test_block_volumes_docker import state_dir  # noqa: F401 (a fixture)
from tests.backup_state import change_one_file, make_state
from tests.fixtures import free_port
from tests.s3server import S3


@pytest.mark.parametrize(
    ("kept", "reported"),
    [
        ([], []),
        (["b" * 64, "a" * 64], ["a" * 8, "b" * 8]),  # short ids, sorted
        (["abcdef0123", "abcdef01"], ["abcdef01"]),  # one snapshot, whatever its form
        ([f"{i:08x}" + "0" * 56 for i in range(MAX_KEPT)], [f"{i:08x}" for i in range(MAX_KEPT)]),
        ([f"{i:08x}" for i in range(MAX_KEPT + 1)], []),  # too many to say: none, never part
    ],
)
def test_the_kept_snapshots_a_report_carries(kept: list[str], reported: list[str]) -> None:
    assert kept_ids(kept) == reported


@needs_restic
@pytest.mark.blockdev
async def test_a_snapshot_reports_what_its_retention_kept(
    s3: S3,  # noqa: F811 (the imported fixture)
    volume: Path,  # noqa: F811 (the imported fixture)
) -> None:
    jobs = BackupJobs(volume.parent, DockerRuntime(None))
    (volume / "memory.md").write_text("one")
    snap = real_job(s3, "snap-1", "alice", keep_hourly=1)
    jobs.update([snap])
    first = await jobs.finished("snap-1")
    assert (first.state, first.kept) == ("done", [first.snapshot_id[:8]])
    (volume / "memory.md").write_text("two")
    jobs.update([msgspec.structs.replace(snap, id="snap-2")])
    second = await jobs.finished("snap-2")
    # One per hour: the first is forgotten, and the report says only the second is left.
    assert second.state == "done" and second.kept == [second.snapshot_id[:8]]
    assert [s.id[:8] for s in await Restic(repo_of(snap)).snapshots()] == second.kept
    no_retention = msgspec.structs.replace(snap, id="snap-3", keep_hourly=0)
    jobs.update([no_retention])
    assert (await jobs.finished("snap-3")).kept == []  # no prune ran: nothing is said
    await jobs.close()


# -- a restore after an agent restart -----------------------------------------------------


@pytest.fixture
async def plane() -> AsyncIterator[tuple[Plane, str]]:
    made = Plane(Assignments(generation=0, containers=[]))
    app = web.Application()
    app.router.add_get("/v1/agent/assignments", made.assignments)
    runner = web.AppRunner(app, shutdown_timeout=0, handler_cancellation=True)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield made, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def agent(url: str, state: Path, worker: str) -> Daemon:
    """The agent's own wiring on the real Docker engine, with stored credentials."""
    settings = load_settings(
        {
            "CONTROL_URL": url,
            "STATE_DIR": str(state),
            "TRAEFIK_DYNAMIC_DIR": str(state.parent / "traefik"),
        }
    )
    made = Daemon(settings)
    made.store.ensure_dir()
    made.creds = Credentials(worker, "s" * 43)
    made.reconciler.owner = Owner(worker)
    return made


async def stop(made: Daemon) -> None:
    await made.backups.close()
    await made.reconciler.close()
    await made.client.close()
    made.runtime.close()


def restic_job(user: str, block: BlockVolumeSpec, repository: str) -> BackupJob:
    """A snapshot job that describes its volume, as the control plane sends it."""
    return job("snap-1", user, volume_id=block.id, repository=repository, volume=block)


@pytest.mark.docker
@needs_restic
@pytest.mark.blockdev
async def test_a_restore_mounts_its_volume_after_a_restart_unmounted_it(
    s3: S3,  # noqa: F811 (the imported fixture)
    state_dir: Path,  # noqa: F811 (the imported fixture)
    plane: tuple[Plane, str],
    users: list[str],
) -> None:
    control, url = plane
    user = new_user()
    users.append(user)
    worker = f"srv-{uuid.uuid4().hex[:12]}"
    block = BlockVolumeSpec(id=f"vol-{user}", device=f"loop:{user}", size_gb=1)
    mount = state_dir / "mounts" / block.id
    repository = s3.repo_url("clawfleet-backups", f"edges/{uuid.uuid4().hex}")
    first = agent(url, state_dir, worker)
    assert first.reconciler.volumes is not None
    await first.reconciler.volumes.ensure(block)  # as the user's spec had it mounted
    make_state(mount / "state", 256 * 1024)
    snapshot = restic_job(user, block, repository)
    first.backups.update([snapshot])
    made = await first.backups.finished("snap-1")
    assert made.state == "done", made
    before = tree(mount)
    change_one_file(mount / "state")
    assert tree(mount) != before
    # The restore comes with the user's spec withheld; the agent saves that set (without
    # its jobs) and is restarted.
    restore = msgspec.structs.replace(
        snapshot, id="restore-1", kind="restore", snapshot_id=made.snapshot_id
    )
    control.current = Assignments(generation=2, containers=[], backups=[restore])
    first.store.save_desired(control.current)
    await stop(first)

    again = agent(url, state_dir, worker)
    again.reconciler.desired = again.store.load_desired()
    # The first passes: no spec names the volume, so it is unmounted. An unmount the
    # kernel finds busy is retried by the next pass, as the agent's own loop does. (CI
    # once found it busy for 30 s: make_state's SQLite files stayed open until a garbage
    # collection, now closed at once.)
    for _ in range(60):
        await again.reconciler.reconcile()
        if not volumes_mounted(state_dir):
            break
        await asyncio.sleep(0.5)
    volumes = again.reconciler.volumes
    assert volumes is not None
    assert volumes_mounted(state_dir) == [], {k: str(v) for k, v in volumes.failures.items()}
    again._registered.set()
    poll = asyncio.create_task(again._poll_loop())
    try:
        async with asyncio.timeout(120):
            while "restore-1" not in {r.id for r in again.backups.reports()}:
                control.asked.clear()
                await control.asked.wait()
            done = await again.backups.finished("restore-1")
    finally:
        poll.cancel()
        await asyncio.gather(poll, return_exceptions=True)
    assert (done.state, done.error) == ("done", "")
    assert tree(mount) == before
    await again.reconciler.reconcile()  # the job is still known: its volume stays
    assert volumes_mounted(state_dir) == [str(mount)]
    again.backups.update([])  # gone from the assignments: the next pass releases it
    await again.reconciler.reconcile()
    assert volumes_mounted(state_dir) == []
    await stop(again)
