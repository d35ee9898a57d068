"""A user whose volume is lost at the provider (issue 13, docs/backups.md "A lost
volume"), through the whole control plane: the autoscaler's runs against the fake Hetzner
API with the real hcloud client, workers as signed fake agents that report their jobs.

The volume is deleted at the fake by hand (a real 404 through hcloud afterwards); its
server dies. The user then waits with "restore needed" on a new server, and is never given
a new volume on its own. The operator recovers it from a snapshot (a new volume, the
snapshot restored onto it with the spec withheld, the control plane restarted midway) or,
with no snapshot, explicitly starts it on an empty volume. Both are refused while the
volume still exists."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from control.appkeys import FLEET, SCALER
from control.capacity.providers.base import ProviderVolume
from tests.fakes.hetzner import HetznerFake
from tests.fixtures import ControlPlane
from tests.test_autoscaler import boot, event_kinds, run
from tests.test_backup_jobs import BACKUPS, mounted_alice, snapshot_done
from tests.test_cli import cli
from tests.test_volumes_fleet import Start, beat, cloud, db, specs, volume_row
from tests.test_volumes_relocation import jobs_of, restart, user
from tests.worker import FakeWorker

__all__ = ["cloud"]  # the fixture, shared with test_volumes_fleet.py
SNAP = "0123456789abcdef"
EMPTY = {"accept_data_loss": "alice", "reason": "no snapshot was ever taken"}


async def delete_by_hand(control: ControlPlane, volume: dict[str, Any]) -> None:
    """What an operator does in the Hetzner console: detach the volume, delete it."""
    assert control.app is not None
    provider = control.app[SCALER].provisioner.provider
    gone = ProviderVolume(
        str(volume["id"]), volume["name"], "nbg1", volume["size"], volume["linux_device"]
    )
    await provider.detach(gone)
    await provider.delete_volume(gone)


async def lost(control: ControlPlane, fake: HetznerFake, snapshot: bool) -> FakeWorker:
    """alice's volume deleted by hand, then her server dead: she waits on a new server
    with the volume's 404, and nothing gives her a new volume. Returns that server."""
    first, vid = await mounted_alice(control, fake)
    if snapshot:
        await snapshot_done(control, first, vid, SNAP)
    (volume,) = fake.volumes.values()
    await delete_by_hand(control, volume)
    assert fake.volumes == {}
    assert control.app is not None
    await control.app[FLEET].sweep(now=time.time() + control.settings.dead_after + 1)
    await run(control)  # alice is demand again: a server for her in the volume's location
    second = await boot(control, fake)
    for _ in range(3):  # time passes: each retry meets the same 404
        await asyncio.to_thread(db, control, "UPDATE volumes SET not_before = 0")
        await run(control)
    alice = await user(control)
    assert alice["server_id"] == second.key_id and alice["state"] == "provisioning"
    assert "not found at the provider: restore needed" in alice["volume"]["error"]
    assert fake.volumes == {}  # never a fresh disk on its own
    assert await specs(second) == {} and await jobs_of(second) == []
    assert "volume_failed" in await event_kinds(control)
    return second


async def test_a_lost_volume_is_recovered_from_a_snapshot_onto_a_new_volume(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud(**BACKUPS)
    second = await lost(control, hetzner_fake, snapshot=True)
    status, body = await control.admin("POST", "/v1/users/alice/recover", {"snapshot_id": SNAP})
    assert status == 202, body
    move = body["move"]
    assert (move["phase"], move["from"], move["to"]) == ("creating", None, second.key_id)
    assert "volume_recovery" in await event_kinds(control)

    await run(control)  # a new volume, attached, and the restore of exactly that snapshot
    (new,) = hetzner_fake.volumes.values()
    assert new["location"]["name"] == "nbg1" and new["labels"]["clawfleet-user"] == "alice"
    (restore,) = await jobs_of(second)
    assert (restore["kind"], restore["snapshot_id"]) == ("restore", SNAP)
    assert restore["volume"]["id"] == str(new["id"])
    assert await specs(second) == {}  # withheld while the state is written
    await restart(control)  # a crash while the restore runs
    await run(control)
    assert list(hetzner_fake.volumes) == [new["id"]]  # resumed, not started over

    await beat(second, [], [str(new["id"])], [{"id": restore["id"], "state": "done"}])
    await run(control)  # restored: only now the spec, with the new volume
    assert (await specs(second))["alice"]["volume"]["id"] == str(new["id"])
    await beat(second, ["alice"], [str(new["id"])])
    await run(control)
    alice = await user(control)
    assert alice["move"] is None and alice["state"] == "running"
    assert alice["volume"]["error"] is None
    row = volume_row(control, "alice")
    assert (row["provider_id"], row["state"], row["server_id"]) == (
        str(new["id"]),
        "attached",
        second.key_id,
    )
    assert list(hetzner_fake.volumes) == [new["id"]]
    assert "volume_recovered" in await event_kinds(control)


async def test_with_no_snapshot_the_operator_starts_the_user_on_an_empty_volume_explicitly(
    cloud: Start,
    hetzner_fake: HetznerFake,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    control = await cloud()
    second = await lost(control, hetzner_fake, snapshot=False)
    wrong = EMPTY | {"accept_data_loss": "bob"}
    status, body = await control.admin("POST", "/v1/users/alice/recover-empty", wrong)
    assert (status, body["error"]["code"]) == (400, "confirmation_required")
    status, body = await control.admin("POST", "/v1/users/alice/recover-empty", {})
    assert status == 400, body  # the confirmation is a required field
    await run(control)
    assert hetzner_fake.volumes == {}  # nothing changed

    monkeypatch.setenv("CLAWFLEET_URL", control.url)
    monkeypatch.setenv("ADMIN_TOKEN", control.admin_token)
    argv = ("recover-empty", "alice", "--accept-data-loss", "alice", "--reason", "no snapshot")
    said = await cli(capsys, *argv)
    assert said.code == 0, said.err
    _, listed = await control.admin("GET", "/v1/events?limit=50")
    (event,) = [e for e in listed["events"] if e["kind"] == "volume_replaced_empty"]
    assert "EMPTY" in event["message"] and "no snapshot" in event["message"]
    await run(control)  # a blank volume, as for a new user
    (new,) = hetzner_fake.volumes.values()
    assert (await specs(second))["alice"]["volume"]["id"] == str(new["id"])


@pytest.mark.parametrize(
    ("path", "body", "overrides", "code"),
    [
        ("recover", {"snapshot_id": SNAP}, BACKUPS, "volume_exists"),
        ("recover-empty", EMPTY, {}, "volume_exists"),
        ("recover-empty", EMPTY, BACKUPS, "snapshot_exists"),  # recover from it instead
        ("recover", {"snapshot_id": SNAP}, {}, "backups_off"),
    ],
)
async def test_a_recovery_is_refused_while_the_volume_exists_or_a_snapshot_could_serve(
    cloud: Start,
    hetzner_fake: HetznerFake,
    path: str,
    body: dict[str, str],
    overrides: dict[str, Any],
    code: str,
) -> None:
    control = await cloud(**overrides)
    worker, vid = await mounted_alice(control, hetzner_fake)
    if overrides:
        await snapshot_done(control, worker, vid, SNAP)
    status, reply = await control.admin("POST", f"/v1/users/alice/{path}", body)
    assert (status, reply["error"]["code"]) == (409, code), reply
    await run(control)
    assert list(hetzner_fake.volumes) == [int(vid)]  # nothing changed
    assert volume_row(control, "alice")["provider_id"] == vid
    assert (await user(control))["move"] is None
    assert (await specs(worker))["alice"]["volume"]["id"] == vid


async def test_a_recovery_waits_for_the_user_to_be_placed_and_a_failed_listing_decides_nothing(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud(**BACKUPS)
    first, vid = await mounted_alice(control, hetzner_fake)
    await snapshot_done(control, first, vid, SNAP)
    hetzner_fake.inject("GET /volumes", 503, "unavailable", times=1)
    status, reply = await control.admin("POST", "/v1/users/alice/recover", {"snapshot_id": SNAP})
    assert status == 503, reply  # the provider could not say: nothing decided
    (volume,) = hetzner_fake.volumes.values()
    await delete_by_hand(control, volume)
    assert control.app is not None
    await control.app[FLEET].sweep(now=time.time() + control.settings.dead_after + 1)
    status, reply = await control.admin("POST", "/v1/users/alice/recover", {"snapshot_id": SNAP})
    assert (status, reply["error"]["code"]) == (409, "not_placed"), reply
    assert (await user(control))["move"] is None


async def test_a_volume_deleted_under_its_running_server_is_recovered_with_the_cli(
    cloud: Start,
    hetzner_fake: HetznerFake,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    control = await cloud(**BACKUPS)
    worker, vid = await mounted_alice(control, hetzner_fake)
    await snapshot_done(control, worker, vid, SNAP)
    monkeypatch.setenv("CLAWFLEET_URL", control.url)
    monkeypatch.setenv("ADMIN_TOKEN", control.admin_token)
    said = await cli(capsys, "recover", "alice", SNAP)
    assert said.code == 1
    assert said.err.startswith("clawfleet: volume_exists: the volume cf-default-alice")
    (volume,) = hetzner_fake.volumes.values()
    await delete_by_hand(control, volume)
    said = await cli(capsys, "recover", "alice", SNAP)  # alice is still placed on it
    assert said.code == 0, said.err
    line = next(x for x in said.out.splitlines() if x.startswith("move "))
    assert f"creating: lost volume -> {worker.key_id} in nbg1" in line
    # No set names the lost volume again: an old mount of it must not run the container.
    assert await specs(worker) == {}
    await run(control)  # on the server it still runs on: its container goes for the restore
    (restore,) = await jobs_of(worker)
    new = restore["volume"]["id"]
    assert restore["kind"] == "restore" and new != vid
    assert await specs(worker) == {}
    await beat(worker, [], [vid, new], [{"id": restore["id"], "state": "done"}])
    assert await specs(worker) == {}  # restored, but not swapped in yet: still nothing
    await run(control)
    assert (await specs(worker))["alice"]["volume"]["id"] == new
