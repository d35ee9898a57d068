"""A cancelled user's final snapshot when its server died (issue 13, point 5;
docs/backups.md, "Retention end"): the volume was forced off the dead server, so nothing
mounts it. The control plane attaches it, for the job only, to another live server in
its location, the job goes to that server, and once it is done the volume is detached
and, at retention end, deleted. Without such a server the volume waits, saying why,
and nothing is deleted. Against the fake Hetzner API with signed fake agents, as
tests/test_backup_jobs.py; the pure choices in parameter tables."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from control.appkeys import FLEET, SCALER
from control.backups import final_owed
from control.users.placement import Room
from control.volumes.final_attach import KEPT, job_server
from tests.fakes.hetzner import HetznerFake
from tests.fixtures import ControlPlane
from tests.test_autoscaler import add_users, boot, run
from tests.test_backup_edges import event_kinds, job_rows
from tests.test_backup_jobs import (  # noqa: F401 (backed_up: the fixture)
    SNAP1,
    SNAP2,
    Start,
    backed_up,
    jobs,
    mounted_alice,
    purge_now,
    snapshot_done,
)
from tests.test_volumes_fleet import beat, source_provider_id, specs, volume_row

NEEDS = frozenset({"block-volumes", "backup-jobs"})


async def died_then_cancelled(control: ControlPlane, fake: HetznerFake) -> dict[str, Any]:
    """alice runs with her volume on a first server, snapshotted once; the server dies
    (its volume is forced off it) and alice is cancelled before she lands anywhere else:
    her cancellation finds no live server holding the volume. Returns the volume."""
    first, vid = await mounted_alice(control, fake)
    await snapshot_done(control, first, vid, SNAP1)  # older than what the volume holds now
    assert control.app is not None
    await control.app[FLEET].sweep(now=time.time() + control.settings.dead_after + 1)
    await run(control)  # the dead server is deleted; the volume is forced off it
    assert volume_row(control, "alice")["state"] == "detached"
    status, _ = await control.admin("DELETE", "/v1/users/alice")
    assert status in (200, 202)
    assert [j["reason"] for j in job_rows(control)] == ["operator"]  # nothing could be asked
    (volume,) = fake.volumes.values()
    assert volume["server"] is None
    return volume  # type: ignore[no-any-return]


async def purged(control: ControlPlane) -> None:
    """Retention ends: alice's row goes (her dead server holds no data to purge)."""
    await asyncio.to_thread(purge_now, control)
    assert control.app is not None
    await control.app[FLEET].sweep()
    _, body = await control.admin("GET", "/v1/users/alice")
    assert body.get("error", {}).get("code") == "not_found", body


async def test_a_detached_volume_is_attached_elsewhere_for_its_final_snapshot_then_deleted(
    backed_up: Start,  # noqa: F811 (the imported fixture)
    hetzner_fake: HetznerFake,
) -> None:
    control = await backed_up()
    volume = await died_then_cancelled(control, hetzner_fake)
    vid = str(volume["id"])
    second = await boot(control, hetzner_fake)  # the server made for alice before she left
    await run(control)
    assert volume["server"] == source_provider_id(hetzner_fake, second)
    assert volume_row(control, "alice")["server_id"] == second.key_id
    assert await specs(second) == {}  # no container of the cancelled user, ever
    (final,) = await jobs(second)
    assert "reason:final-retention" in final["tags"]
    assert final["volume"]["id"] == vid  # so the agent mounts it for the job
    await beat(second, [], [])  # not mounted yet: the volume stays for the job
    await run(control)
    assert volume["server"] == source_provider_id(hetzner_fake, second)
    assert [j["id"] for j in await jobs(second)] == [final["id"]]  # asked once
    await beat(second, [], [vid], [{"id": final["id"], "state": "running"}])
    await beat(second, [], [vid], [{"id": final["id"], "state": "done", "snapshot_id": SNAP2}])
    assert await jobs(second) == []
    await beat(second, [], [])  # the job left: the agent unmounted it
    await run(control)
    assert volume["server"] is None and vid in {str(v["id"]) for v in hetzner_fake.volumes.values()}
    assert volume_row(control, "alice")["state"] == "detached"
    await run(control)
    assert len(job_rows(control)) == 2  # done: not asked again
    await purged(control)
    await run(control)
    assert hetzner_fake.volumes == {} and volume_row(control, "alice") == {}
    kinds = event_kinds(control, "alice")
    assert kinds.count("volume_attached") == 2 and "volume_deleted" in kinds


async def test_without_a_live_server_in_its_location_the_volume_waits_until_one_comes(
    backed_up: Start,  # noqa: F811 (the imported fixture)
    hetzner_fake: HetznerFake,
) -> None:
    """Nothing is deleted meanwhile, even once retention is over; the first server that
    registers there takes the job, and the purged user's volume then goes at once."""
    control = await backed_up()
    volume = await died_then_cancelled(control, hetzner_fake)
    await run(control)  # the server made for alice has not registered: not live
    row = volume_row(control, "alice")
    assert row["state"] == "detached" and row["last_error"].startswith(KEPT)
    assert "no live server in nbg1" in row["last_error"]
    await purged(control)
    await run(control)
    await run(control)
    assert list(hetzner_fake.volumes.values()) == [volume] and volume["server"] is None
    assert "no live server in nbg1" in volume_row(control, "alice")["last_error"]
    assert event_kinds(control, "alice").count("volume_waiting") == 1  # one per new reason
    assert [j["reason"] for j in job_rows(control)] == ["operator"]
    second = await boot(control, hetzner_fake)
    await run(control)
    assert volume["server"] == source_provider_id(hetzner_fake, second)
    (final,) = await jobs(second)
    vid = str(volume["id"])
    await beat(second, [], [vid], [{"id": final["id"], "state": "done", "snapshot_id": SNAP2}])
    await beat(second, [], [])
    await run(control)  # detached, then deleted: retention is over
    assert hetzner_fake.volumes == {} and volume_row(control, "alice") == {}


async def test_one_volume_whose_attach_fails_keeps_no_other_waiting_and_is_unwound(
    backed_up: Start,  # noqa: F811 (the imported fixture)
    hetzner_fake: HetznerFake,
) -> None:
    """alice and bob lose their server and are cancelled; the provider times out on
    alice's attach (did it happen? only a detach can tell). bob's volume goes on in the
    same run; alice's waits, saying why, is unwound by the volume step after its
    back-off and then attached for its job."""
    control = await backed_up()
    await add_users(control, "alice", "bob")
    await run(control)
    first = await boot(control, hetzner_fake)
    await run(control)  # both placed there, their volumes attached
    ids = {v["labels"]["clawfleet-user"]: str(v["id"]) for v in hetzner_fake.volumes.values()}
    await beat(first, ["alice", "bob"], [ids["alice"], ids["bob"]])
    assert control.app is not None
    await control.app[FLEET].sweep(now=time.time() + control.settings.dead_after + 1)
    await run(control)  # dead: both volumes forced off it
    for user in ("alice", "bob"):
        assert (await control.admin("DELETE", f"/v1/users/{user}"))[0] in (200, 202)
    await run(control)  # after the runs the cancellations triggered: none is under way
    # The run the registration triggers (or the next) takes both volumes, alice's first
    # (by user id): hers meets the fault. A frozen clock keeps her back-off running.
    hetzner_fake.inject("POST /volumes/{id}/actions/attach", 503, "unavailable", times=1)
    frozen = time.time()
    control.app[SCALER].provisioner.clock = lambda: frozen
    second = await boot(control, hetzner_fake)
    await run(control)
    alice = volume_row(control, "alice")
    assert (alice["state"], alice["server_id"]) == ("attaching", second.key_id)
    assert alice["last_error"].startswith(KEPT) and "busy" in alice["last_error"]
    assert "volume_failed" in event_kinds(control, "alice")
    assert volume_row(control, "bob")["state"] == "attached"
    assert [j["user_id"] for j in await jobs(second)] == ["bob"]
    control.app[SCALER].provisioner.clock = lambda: frozen + 60  # past the back-off
    await run(control)  # unwound by a detach, then attached again, with its job
    assert volume_row(control, "alice")["state"] == "attached"
    assert sorted(j["user_id"] for j in await jobs(second)) == ["alice", "bob"]
    assert "volume_detached" in event_kinds(control, "alice")


def room(server_id: str, **kw: Any) -> Room:
    fields: dict[str, Any] = {
        "accepts_work": True,
        "memory_total_mb": 4096,
        "memory_used_mb": 0,
        "location": "nbg1",
        "volume_slots": 5,
        "features": NEEDS,
    }
    return Room(server_id=server_id, **(fields | kw))


@pytest.mark.parametrize(
    ("rooms", "chosen"),
    [
        ([room("a")], "a"),
        ([room("a", location="hel1")], None),  # a volume attaches only in its location
        ([room("a", volume_slots=0)], None),  # 16 attached: never a 17th
        ([room("a", accepts_work=False)], None),  # draining, cordoned or over-claimed
        ([room("a", features=frozenset({"block-volumes"}))], None),  # cannot run the job
        ([room("a", volume_slots=9), room("b", volume_slots=2)], "b"),  # the fullest
        ([room("a", memory_used_mb=100), room("b", memory_used_mb=900)], "b"),
        ([room("b"), room("a")], "a"),  # ties to the lower id
        ([], None),
    ],
)
def test_the_server_a_detached_volume_is_attached_to_for_its_job(
    rooms: list[Room], chosen: str | None
) -> None:
    assert job_server(rooms, "nbg1", NEEDS) == chosen


@pytest.mark.parametrize(
    ("asked", "done", "waived", "cancelled", "owed"),
    [
        (None, None, None, None, True),  # purged, never asked: the volume must not go yet
        (10.0, 20.0, None, None, False),  # done after the ask
        (10.0, 5.0, None, None, True),  # only an older snapshot
        (None, 5.0, None, 10.0, True),  # cancelled while detached: nothing since
        (None, 10.0, None, 10.0, False),
        (5.0, 8.0, None, 10.0, True),  # an earlier cancellation's final: not this one's
        (10.0, None, 12.0, None, False),  # waived after the ask
        (10.0, None, 8.0, None, True),  # a waiver before the latest ask waives nothing
        (None, None, 12.0, 10.0, False),
    ],
)
def test_whether_a_cancelled_users_volume_still_owes_its_final_snapshot(
    asked: float | None,
    done: float | None,
    waived: float | None,
    cancelled: float | None,
    owed: bool,
) -> None:
    assert final_owed(asked, done, waived, cancelled) is owed
