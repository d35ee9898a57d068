"""A move to another location through a backup and a restore (issue 13), through the
whole control plane: the autoscaler's runs against the fake Hetzner API with the real
hcloud client, workers as signed fake agents that report their jobs. The control plane
is restarted between steps (a crash resumes the move where it was), and an attach
failure leaves the move waiting with its error and an event, then retried. Checked
throughout: the target never gets the user's spec before the restore is done, and the
old volume is deleted only after the user ran on the target."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from control.appkeys import SCALER
from tests.fakes.hetzner import HetznerFake
from tests.fixtures import ControlPlane
from tests.test_autoscaler import boot, event_kinds, run
from tests.test_backup_jobs import BACKUPS
from tests.test_cli import cli
from tests.test_volumes_fleet import (
    Start,
    beat,
    cloud,
    db,
    placed_with_volume,
    source_provider_id,
    specs,
    volume_row,
)
from tests.worker import FakeWorker

__all__ = ["cloud"]  # the fixture, shared with test_volumes_fleet.py
SNAP = "0123456789abcdef"


async def jobs_of(worker: FakeWorker) -> list[dict[str, Any]]:
    reply = await worker.assignments()
    assert reply.status == 200, reply.body
    return list(reply.body.get("backups") or [])


async def user(control: ControlPlane) -> dict[str, Any]:
    status, body = await control.admin("GET", "/v1/users/alice")
    assert status == 200, body
    return body


async def restart(control: ControlPlane) -> None:
    """A crash of the control plane: the same database and port, nothing in memory."""
    await control.stop()
    await control.start()


async def in_fsn1(control: ControlPlane, fake: HetznerFake) -> FakeWorker:
    """A server in the other location, created as the autoscaler creates one for a user
    whose volume is there."""
    assert control.app is not None
    assert await control.app[SCALER].provisioner.create_one("a move's target", "fsn1")
    worker = await boot(control, fake)
    await beat(worker, [], [])
    return worker


async def moving(control: ControlPlane, fake: HetznerFake) -> tuple[FakeWorker, FakeWorker]:
    source = await placed_with_volume(control, fake)
    (volume,) = fake.volumes.values()
    await beat(source, ["alice"], [str(volume["id"])])
    assert (await user(control))["state"] == "running"
    target = await in_fsn1(control, fake)
    status, body = await control.admin("POST", "/v1/users/alice/move", {"location": "fsn1"})
    assert status == 200, body
    assert body["server_id"] == target.key_id and body["move"]["phase"] == "stopping"
    assert await specs(source) == {} and await specs(target) == {}  # nobody runs it
    return source, target


async def test_a_move_to_another_location_restores_the_final_snapshot_there(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud(**BACKUPS)
    source, target = await moving(control, hetzner_fake)
    (old,) = hetzner_fake.volumes.values()
    old_id = str(old["id"])
    await run(control)  # the source still reports the container: no snapshot yet
    assert await jobs_of(source) == []
    assert "waiting for the container" in (await user(control))["move"]["error"]

    await beat(source, [], [old_id])  # stopped; the volume still mounted
    await run(control)
    (snapshot,) = await jobs_of(source)
    assert (snapshot["kind"], snapshot["volume_id"]) == ("snapshot", old_id)
    assert "reason:move" in snapshot["tags"]
    await restart(control)  # a crash while the snapshot runs

    done = {"id": snapshot["id"], "state": "done", "snapshot_id": SNAP, "bytes_added": 9}
    await beat(source, [], [old_id], [done])
    hetzner_fake.inject("POST /volumes/{id}/actions/attach", 503, "unavailable", times=1)
    await run(control)  # the new volume is created; attaching it fails
    new = next(v for v in hetzner_fake.volumes.values() if v["id"] != old["id"])
    assert new["location"]["name"] == "fsn1" and new["server"] is None
    alice = await user(control)
    assert alice["move"]["phase"] == "attaching" and "busy" in alice["move"]["error"]
    assert "busy" in alice["volume"]["error"]  # on the user's volume too
    assert "move_failed" in await event_kinds(control)
    assert await specs(target) == {} and await jobs_of(target) == []
    await asyncio.to_thread(db, control, "UPDATE relocations SET not_before = 0")
    await restart(control)

    await run(control)  # attached, and the restore of exactly that snapshot asked for
    assert new["server"] == source_provider_id(hetzner_fake, target)
    (restore,) = await jobs_of(target)
    assert (restore["kind"], restore["snapshot_id"]) == ("restore", SNAP)
    assert restore["volume"]["id"] == restore["volume_id"] == str(new["id"])
    assert await specs(target) == {}  # mounted for the job only: no container on it
    await beat(target, [], [str(new["id"])], [{"id": restore["id"], "state": "running"}])
    await run(control)
    assert await specs(target) == {}

    await beat(target, [], [str(new["id"])], [{"id": restore["id"], "state": "done"}])
    await run(control)  # restored: only now the spec, with the new volume
    assert (await specs(target))["alice"]["volume"]["id"] == str(new["id"])
    assert old["id"] in hetzner_fake.volumes  # kept until alice ran there
    await beat(target, ["alice"], [str(new["id"])])
    await beat(source, [], [])  # the source let the old volume go
    await run(control)
    assert list(hetzner_fake.volumes) == [new["id"]]
    alice = await user(control)
    assert alice["move"] is None and alice["state"] == "running"
    assert alice["volume"]["location"] == "fsn1" and alice["volume"]["server_id"] == target.key_id
    row = volume_row(control, "alice")
    assert (row["provider_id"], row["state"]) == (str(new["id"]), "attached")
    assert "user_relocated" in await event_kinds(control)


async def test_a_move_whose_user_left_the_target_before_the_restore_is_called_off(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud(**BACKUPS)
    source, _ = await moving(control, hetzner_fake)
    (old,) = hetzner_fake.volumes.values()
    await beat(source, [], [str(old["id"])])
    await run(control)
    (snapshot,) = await jobs_of(source)
    done = {"id": snapshot["id"], "state": "done", "snapshot_id": SNAP}
    hetzner_fake.inject("POST /volumes/{id}/actions/attach", 503, "unavailable", times=1)
    await beat(source, [], [str(old["id"])], [done])
    await run(control)  # a new volume, not attached
    assert len(hetzner_fake.volumes) == 2
    assert (await control.admin("DELETE", "/v1/users/alice"))[0] == 200  # cancelled
    await asyncio.to_thread(db, control, "UPDATE relocations SET not_before = 0")
    await run(control)
    assert list(hetzner_fake.volumes) == [old["id"]]  # its state stays where it was
    assert volume_row(control, "alice")["provider_id"] == str(old["id"])
    assert (await user(control))["move"] is None
    assert "move_aborted" in await event_kinds(control)


@pytest.mark.parametrize(
    ("overrides", "body", "code"),
    [
        ({}, {"location": "fsn1"}, "backups_off"),
        (BACKUPS, {"location": "nbg1"}, "same_location"),
        (BACKUPS, {"location": "hel1"}, "no_room"),  # no server there at all
    ],
)
async def test_a_move_to_another_location_is_refused_when_it_cannot_be_done(
    cloud: Start, hetzner_fake: HetznerFake, overrides: dict[str, Any], body: Any, code: str
) -> None:
    control = await cloud(**overrides)
    source = await placed_with_volume(control, hetzner_fake)
    (volume,) = hetzner_fake.volumes.values()
    await beat(source, ["alice"], [str(volume["id"])])
    await in_fsn1(control, hetzner_fake)
    status, reply = await control.admin("POST", "/v1/users/alice/move", body)
    assert (status, reply["error"]["code"]) == (409, code), reply
    assert (await user(control))["server_id"] == source.key_id  # nothing changed
    assert (await user(control))["move"] is None


async def test_the_cli_moves_to_a_location_and_shows_the_moves_phase(
    cloud: Start,
    hetzner_fake: HetznerFake,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    control = await cloud(**BACKUPS)
    monkeypatch.setenv("CLAWFLEET_URL", control.url)
    monkeypatch.setenv("ADMIN_TOKEN", control.admin_token)
    source = await placed_with_volume(control, hetzner_fake)
    (volume,) = hetzner_fake.volumes.values()
    await beat(source, ["alice"], [str(volume["id"])])
    target = await in_fsn1(control, hetzner_fake)
    said = await cli(capsys, "move", "alice", "--location", "fsn1")
    assert said.code == 0, said.err
    said = await cli(capsys, "user", "alice")
    line = next(x for x in said.out.splitlines() if x.startswith("move "))
    assert f"stopping: {source.key_id} -> {target.key_id} in fsn1" in line
    assert "waiting" not in line  # no run yet: nothing to wait for
    await run(control)
    said = await cli(capsys, "user", "alice")
    assert "waiting for the container" in said.out
