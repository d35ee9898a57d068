"""Volumes that follow the user (issue 13), through the whole control plane: the
autoscaler's runs against the fake Hetzner API with the real hcloud client, workers as
signed fake agents. The invariant checked throughout: a user is in a worker's desired
set only where its volume is attached, and never given a second volume."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from control.appkeys import FLEET, SCALER
from control.plans import DEFAULT_PLAN
from tests.database import execute
from tests.fakes.hetzner import HetznerFake, agent_dist, fleet_settings, provider_with_timeout
from tests.fixtures import ControlPlane
from tests.test_autoscaler import add_users, boot, event_kinds, run
from tests.worker import FakeWorker

Start = Any


@pytest.fixture
def cloud(control_factory: Any, hetzner_fake: HetznerFake, tmp_path: Path) -> Start:
    dist = agent_dist(tmp_path / "dist")

    async def start(**overrides: Any) -> ControlPlane:
        settings = fleet_settings(hetzner_fake, dist) | {"user_volumes": True} | overrides
        plane = control_factory(provider_with_timeout(2.0, None), **settings)
        await plane.start()
        await run(plane)
        return plane

    return start


def volume_row(control: ControlPlane, user_id: str) -> dict[str, Any]:
    rows = execute(control.settings, "SELECT * FROM volumes WHERE user_id = ?", user_id)
    return rows[0] if rows else {}  # either backend (tests/database.py)


def db(control: ControlPlane, sql: str, *params: Any) -> None:
    execute(control.settings, sql, *params)


async def specs(worker: FakeWorker) -> dict[str, dict[str, Any]]:
    reply = await worker.assignments()
    assert reply.status == 200, reply.body
    return {c["user_id"]: c for c in reply.body["containers"]}


def running(user_id: str) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "state": "running",
        "health": "healthy",
        "image_id": "x",
        "started_at": "2026-11-27T00:00:00Z",
        "restart_count": 0,
        "error": None,
    }


async def beat(
    worker: FakeWorker,
    containers: list[str],
    mounted: list[str],
    backups: list[dict[str, Any]] | None = None,
    error: str = "",
) -> None:
    generation = (await worker.assignments()).body["generation"]
    body = {
        "agent_version": "0.1.0",
        "applied_generation": generation,
        "resources": worker.resources,
        "containers": [running(u) for u in containers],
        "volumes": [{"id": v, "state": "mounted", "error": error} for v in mounted],
        "backups": backups or [],
        "features": worker.features,  # as a current agent's heartbeat declares them
    }
    reply = await worker.request("POST", "/v1/agent/heartbeat", body)
    assert reply.status == 200, reply.body


async def placed_with_volume(control: ControlPlane, fake: HetznerFake) -> FakeWorker:
    await add_users(control, "alice")
    await run(control)  # a server for alice
    worker = await boot(control, fake)  # alice is placed there
    assert await specs(worker) == {}  # no volume attached yet: no container
    await run(control)
    return worker


async def test_first_placement_creates_the_volume_there_and_attaches_it(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud()
    worker = await placed_with_volume(control, hetzner_fake)
    (volume,) = hetzner_fake.volumes.values()
    server = hetzner_fake.servers[volume["server"]]
    assert server["labels"]["clawfleet-server"] == worker.key_id
    assert volume["location"]["name"] == server["location"]["name"] == "nbg1"
    assert volume["size"] == 10  # the default plan's 5 GB, raised to Hetzner's minimum
    assert volume["name"] == "cf-default-alice"
    assert volume["labels"] == {
        "managed-by": "clawfleet",
        "clawfleet-cluster": "default",
        "clawfleet-user": "alice",
    }
    spec = (await specs(worker))["alice"]
    assert spec["volume"] == {
        "id": str(volume["id"]),
        "device": volume["linux_device"],
        "size_gb": 10,
    }
    assert volume_row(control, "alice")["state"] == "attached"
    kinds = await event_kinds(control)
    assert "volume_created" in kinds and "volume_attached" in kinds


async def test_a_plan_with_more_disk_grows_the_attached_volume_and_says_so(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    """A paid upgrade whose plan has more disk: the spec carries the plan's size at once
    (the agent grows the file system once the device has), and the volume is resized at
    Hetzner where it is attached. A retry after a lost reply, and a smaller plan, change
    nothing more: the spec never asks for less than the volume has."""
    roomy = replace(DEFAULT_PLAN, name="roomy", disk_gb=25)
    control = await cloud(plans={"default": DEFAULT_PLAN, "roomy": roomy})
    worker = await placed_with_volume(control, hetzner_fake)
    (volume,) = hetzner_fake.volumes.values()
    await beat(worker, ["alice"], [str(volume["id"])])
    db(control, "UPDATE users SET plan = 'roomy' WHERE id = 'alice'")
    assert (await specs(worker))["alice"]["volume"]["size_gb"] == 25
    assert volume["size"] == 10

    await run(control)
    assert volume["size"] == 25 and volume["server"] is not None  # grown where it is
    assert volume_row(control, "alice")["size_gb"] == 25
    spec = (await specs(worker))["alice"]
    assert spec["volume"]["size_gb"] == 25
    (event,) = [e for e in await events_of(control, "volume_resized")]
    assert event["message"] == "cf-default-alice grown from 10 to 25 GB (its plan's disk)"
    # The agent could not grow the file system: the user's volume says why, until it did.
    await beat(worker, ["alice"], [str(volume["id"])], error="growing volume: no space")
    await run(control)
    said = f"the agent on {worker.key_id} reports it mounted: growing volume: no space"
    assert volume_row(control, "alice")["last_error"] == said
    await beat(worker, ["alice"], [str(volume["id"])])
    await run(control)
    assert volume_row(control, "alice")["last_error"] is None

    # The reply was lost: the row still says 10, Hetzner 25. The retry is told so.
    db(control, "UPDATE volumes SET size_gb = 10 WHERE user_id = 'alice'")
    hetzner_fake.finish_actions()
    await run(control)
    assert volume["size"] == 25 and volume_row(control, "alice")["size_gb"] == 25
    assert not volume_row(control, "alice")["last_error"]

    db(control, "UPDATE users SET plan = 'default' WHERE id = 'alice'")  # a downgrade
    await run(control)
    assert volume["size"] == 25 and volume_row(control, "alice")["size_gb"] == 25
    assert (await specs(worker))["alice"]["volume"]["size_gb"] == 25
    assert len(await events_of(control, "volume_resized")) == 2


async def events_of(control: ControlPlane, kind: str) -> list[dict[str, Any]]:
    status, body = await control.admin("GET", "/v1/events?limit=1000")
    assert status == 200, body
    return [e for e in body["events"] if e["kind"] == kind]


async def drained_away(
    control: ControlPlane, fake: HetznerFake
) -> tuple[FakeWorker, FakeWorker, dict[str, Any]]:
    """alice, running with her volume on a first server, moved off it by a drain to a
    second one; the old container still runs. (source, target, the volume)"""
    source = await placed_with_volume(control, fake)
    (volume,) = fake.volumes.values()
    await beat(source, ["alice"], [str(volume["id"])])
    await control.admin("POST", f"/v1/servers/{source.key_id}/drain")
    await run(control)  # alice is demand: a second server
    target = await boot(control, fake)
    await run(control)  # the drain moves alice; the old container still runs
    return source, target, volume


async def test_a_move_detaches_once_the_old_container_stopped_then_attaches(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud()
    source, target, volume = await drained_away(control, hetzner_fake)
    vid = str(volume["id"])
    _, alice = await control.admin("GET", "/v1/users/alice")
    assert alice["server_id"] == target.key_id
    assert await specs(target) == {} and await specs(source) == {}  # break before make
    assert volume["server"] == int(source_provider_id(hetzner_fake, source))
    assert "waiting for the container" in volume_row(control, "alice")["last_error"]
    assert "volume_waiting" in await event_kinds(control)
    await beat(source, [], [])  # the old container is gone and the volume unmounted
    await run(control)
    assert volume["server"] == int(source_provider_id(hetzner_fake, target))
    assert (await specs(target))["alice"]["volume"]["id"] == vid
    assert len(hetzner_fake.volumes) == 1


def source_provider_id(fake: HetznerFake, worker: FakeWorker) -> int:
    return next(
        sid for sid, s in fake.servers.items() if s["labels"]["clawfleet-server"] == worker.key_id
    )


async def test_a_dead_server_has_its_volume_detached_by_force_and_the_user_comes_back(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud()
    first = await placed_with_volume(control, hetzner_fake)
    (volume,) = hetzner_fake.volumes.values()
    await beat(first, ["alice"], [str(volume["id"])])  # its last word: alice runs there
    assert control.app is not None
    await control.app[FLEET].sweep(now=time.time() + control.settings.dead_after + 1)
    await run(control)  # the dead server is deleted; the volume is forced off it
    row = volume_row(control, "alice")
    assert row["state"] == "detached" and row["server_id"] is None
    second = await boot(control, hetzner_fake)  # the replacement
    await run(control)
    assert volume["server"] == source_provider_id(hetzner_fake, second)
    assert (await specs(second))["alice"]["volume"]["id"] == str(volume["id"])
    assert len(hetzner_fake.volumes) == 1  # never a fresh disk
    assert "volume_detached" in await event_kinds(control)


@pytest.mark.parametrize(
    ("status", "code", "says"),
    [
        (423, "locked", "busy"),
        (403, "resource_limit_exceeded", "16"),
        (503, "unavailable", "busy"),
    ],
)
async def test_an_attach_failure_leaves_the_user_waiting_never_started_without_it(
    cloud: Start, hetzner_fake: HetznerFake, status: int, code: str, says: str
) -> None:
    control = await cloud()
    hetzner_fake.inject("POST /volumes/{id}/actions/attach", status, code, times=1)
    worker = await placed_with_volume(control, hetzner_fake)
    assert await specs(worker) == {}
    row = volume_row(control, "alice")
    assert row["state"] == "attaching" and says in row["last_error"]
    assert row["not_before"] > time.time()
    assert "volume_failed" in await event_kinds(control)
    _, alice = await control.admin("GET", "/v1/users/alice")  # the operator sees why
    assert alice["volume"]["state"] == "attaching" and says in alice["volume"]["error"]
    await run(control)  # not due yet: no call
    assert hetzner_fake.count("POST /volumes/{id}/actions/attach") == 1
    await asyncio.to_thread(db, control, "UPDATE volumes SET not_before = 0")  # time passes
    await run(control)
    assert "alice" in await specs(worker)
    assert volume_row(control, "alice")["last_error"] is None


async def test_a_location_mismatch_leaves_the_user_waiting(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud()
    await add_users(control, "alice")
    await run(control)
    worker = await boot(control, hetzner_fake)
    fsn1 = next(loc for loc in hetzner_fake.locations if loc["name"] == "fsn1")
    original = hetzner_fake.volumes.copy()
    assert original == {}
    # The volume exists already, in another location than the server (made by hand).
    await run_create_elsewhere(control, fsn1["name"])
    await run(control)
    assert await specs(worker) == {}
    assert "different locations" in volume_row(control, "alice")["last_error"]
    assert len(hetzner_fake.volumes) == 1


async def run_create_elsewhere(control: ControlPlane, location: str) -> None:
    """The volume created in `location` and recorded as nbg1's (a stale row)."""
    assert control.app is not None
    provider = control.app[SCALER].provisioner.provider
    labels = {"managed-by": "clawfleet", "clawfleet-cluster": "default", "clawfleet-user": "alice"}
    made = await provider.create_volume("cf-default-alice", 10, location, labels)
    now = time.time()
    await asyncio.to_thread(
        db,
        control,
        "INSERT INTO volumes (user_id, name, provider, provider_id, location, size_gb, device, "
        "state, created_at, updated_at) VALUES ('alice', ?, 'hetzner', ?, 'nbg1', 10, ?, "
        "'detached', ?, ?)",
        made.name,
        made.provider_id,
        made.device,
        now,
        now,
    )


async def test_orphan_volumes_go_after_three_sweeps_and_never_on_a_failed_listing(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud()
    await placed_with_volume(control, hetzner_fake)  # alice's volume is known
    assert control.app is not None
    provider = control.app[SCALER].provisioner.provider
    ours = {"managed-by": "clawfleet", "clawfleet-cluster": "default"}
    orphan = await provider.create_volume("cf-default-ghost", 10, "nbg1", ours)
    foreign = await provider.create_volume("someone-else", 10, "nbg1", {"managed-by": "clawfleet"})
    # Older than RETENTION_DAYS (30): a new one is kept (tests/test_volumes_orphans.py).
    hetzner_fake.volumes[int(orphan.provider_id)]["created"] = "2026-01-01T00:00:00+00:00"
    await run(control, scheduled=True)
    await run(control, scheduled=True)
    hetzner_fake.inject("GET /volumes", 503, "unavailable")
    await run(control, scheduled=True)  # the listing failed: nothing deleted, counts kept
    assert int(orphan.provider_id) in hetzner_fake.volumes
    assert control.app[SCALER].state.volume_sightings == {orphan.provider_id: 2}
    control.app[SCALER].state.retries.clear()  # the listing's back-off has passed
    await run(control, scheduled=True)
    assert int(orphan.provider_id) not in hetzner_fake.volumes
    assert int(foreign.provider_id) in hetzner_fake.volumes  # not both of our labels
    assert len([v for v in hetzner_fake.volumes.values() if v["name"] == "cf-default-alice"]) == 1
    assert "orphan_volume_deleted" in await event_kinds(control)


async def test_a_cancelled_users_volume_is_detached_and_kept_then_deleted_after_retention(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud()
    worker = await placed_with_volume(control, hetzner_fake)
    (volume,) = hetzner_fake.volumes.values()
    await beat(worker, ["alice"], [str(volume["id"])])
    status, _ = await control.admin("DELETE", "/v1/users/alice")
    assert status in (200, 202, 204)
    await run(control)
    assert "waiting for the container" in volume_row(control, "alice")["last_error"]
    await beat(worker, [], [])  # the agent stopped it and unmounted the volume
    await run(control)
    assert volume["server"] is None and volume_row(control, "alice")["state"] == "detached"
    # The data is on the volume, not on the server: nothing keeps the server any more.
    _, listing = await control.admin("GET", "/v1/servers")
    (server,) = [s for s in listing["servers"] if s["id"] == worker.key_id]
    assert server.get("kept_because") is None
    assert control.app is not None
    await asyncio.to_thread(
        db, control, "UPDATE users SET purge_after = ? WHERE id = 'alice'", time.time() - 1
    )
    await control.app[FLEET].sweep()  # the worker is asked to purge
    await beat(worker, [], [])
    await control.app[FLEET].sweep()  # it did: alice is forgotten
    await run(control)
    assert hetzner_fake.volumes == {} and volume_row(control, "alice") == {}
    assert "volume_deleted" in await event_kinds(control)


async def test_a_volume_the_agent_cannot_mount_shows_on_the_user_until_it_is_mounted(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud()
    worker = await placed_with_volume(control, hetzner_fake)
    (volume,) = hetzner_fake.volumes.values()
    generation = (await worker.assignments()).body["generation"]
    body = {
        "agent_version": "0.1.0",
        "applied_generation": generation,
        "resources": worker.resources,
        "containers": [],
        "volumes": [{"id": str(volume["id"]), "state": "error", "error": "mount: bad superblock"}],
        "features": worker.features,
    }
    assert (await worker.request("POST", "/v1/agent/heartbeat", body)).status == 200
    await run(control)
    _, alice = await control.admin("GET", "/v1/users/alice")
    assert alice["volume"]["error"] == (
        f"the agent on {worker.key_id} reports it error: mount: bad superblock"
    )
    await beat(worker, ["alice"], [str(volume["id"])])
    await run(control)
    _, alice = await control.admin("GET", "/v1/users/alice")
    assert alice["volume"]["error"] is None and alice["volume"]["state"] == "attached"
