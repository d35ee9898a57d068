"""A drain-and-delete with backups on (issue 13, docs/backups.md), through the whole
control plane with the fake Hetzner API and signed fake agents: the transaction that
moves the user off the draining server, and so withdraws its container there (with
volumes a user runs only where its volume is), also asks that server for the user's
final snapshot; the set the old agent reads next has no container and has the job, and
the volume leaves the server only once the job has ended (done, or failed: a drain
moves the volume, it does not lose it), whatever the agent's mounts say meanwhile."""

from __future__ import annotations

from typing import Any

import pytest

from control.appkeys import SCALER
from control.capacity import scale_down
from tests.fakes.hetzner import HetznerFake
from tests.fixtures import ControlPlane
from tests.test_autoscaler import add_users, boot, run
from tests.test_backup_jobs import (  # noqa: F401 (backed_up: the fixture)
    SNAP1,
    SNAP2,
    Start,
    backed_up,
    jobs,
)
from tests.test_volumes_fleet import beat, source_provider_id, specs, volume_row
from tests.worker import FakeWorker


async def two_servers_alice_mounted(
    control: ControlPlane, fake: HetznerFake
) -> tuple[FakeWorker, FakeWorker, dict[str, Any]]:
    """alice running on a first server with her volume mounted, bob on a second one in
    the same location, with room for alice. (alice's server, bob's, alice's volume)"""
    await add_users(control, "alice")
    await run(control)  # a server for alice
    source = await boot(control, fake)
    await run(control)  # her volume, attached there
    (volume,) = fake.volumes.values()
    await beat(source, ["alice"], [str(volume["id"])])
    status, body = await control.admin("POST", f"/v1/servers/{source.key_id}/cordon")
    assert status in (200, 202), body
    await add_users(control, "bob")
    await run(control)  # a second server, for bob
    target = await boot(control, fake)
    await run(control)
    bobs = next(v for v in fake.volumes.values() if v["id"] != volume["id"])
    await beat(target, ["bob"], [str(bobs["id"])])
    # alice's first scheduled snapshot, asked for meanwhile, is done: nothing is open.
    done = [
        {"id": j["id"], "state": "done", "snapshot_id": SNAP2, "bytes_added": 1}
        for j in await jobs(source)
    ]
    await beat(source, ["alice"], [str(volume["id"])], done)
    assert await jobs(source) == []
    return source, target, volume


async def drain_step(control: ControlPlane) -> None:
    """Only the autoscaler's drain step: nothing after it (the backup step) runs."""
    assert control.app is not None
    await scale_down.drain(control.app[SCALER].provisioner)


@pytest.mark.parametrize("outcome", ["done", "failed"])
async def test_the_set_that_withdraws_the_container_carries_the_final_snapshot(
    backed_up: Start,  # noqa: F811 (the imported fixture)
    hetzner_fake: HetznerFake,
    outcome: str,
) -> None:
    control = await backed_up(hetzner_locations=("nbg1",))
    source, target, volume = await two_servers_alice_mounted(control, hetzner_fake)
    vid = str(volume["id"])
    status, body = await control.admin("POST", f"/v1/servers/{source.key_id}/drain")
    assert status in (200, 202), body
    await drain_step(control)
    _, alice = await control.admin("GET", "/v1/users/alice")
    assert alice["server_id"] == target.key_id
    reply = await source.assignments()
    assert reply.body["containers"] == []
    (final,) = reply.body["backups"]
    assert "reason:final-drain" in final["tags"] and final["volume"]["id"] == vid
    await beat(source, [], [vid], [{"id": final["id"], "state": "running"}])
    await run(control)
    await beat(source, [], [], [{"id": final["id"], "state": "running"}])  # mounts aside
    await run(control)
    assert volume["server"] == source_provider_id(hetzner_fake, source)  # not detached
    assert "waiting for backup job" in volume_row(control, "alice")["last_error"]
    assert set(await specs(target)) == {"bob"}
    ended = {"id": final["id"], "state": outcome}
    ended |= {"snapshot_id": SNAP1} if outcome == "done" else {"error": "restic: timeout"}
    await beat(source, [], [], [ended])
    await run(control)
    assert volume["server"] == source_provider_id(hetzner_fake, target)
    assert (await specs(target))["alice"]["volume"]["id"] == vid
