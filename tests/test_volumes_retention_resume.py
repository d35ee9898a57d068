"""A cancelled user resumed within RETENTION_DAYS gets back the very volume it left
(issue 13, point 5), wherever it lands in that location: on a new server when the old
one is cordoned, and after the old server is gone. Never a second volume, never a
container before that volume is attached where the user runs."""

from __future__ import annotations

from tests.fakes.hetzner import HetznerFake
from tests.fixtures import ControlPlane
from tests.test_autoscaler import boot, event_kinds, run
from tests.test_volumes_fleet import (
    Start,
    beat,
    cloud,
    placed_with_volume,
    source_provider_id,
    specs,
    volume_row,
)
from tests.worker import FakeWorker

__all__ = ["cloud"]  # the fixture, shared with test_volumes_fleet.py


async def cancelled_and_detached(control: ControlPlane, fake: HetznerFake) -> FakeWorker:
    """alice placed with her volume, cancelled, her container stopped: the volume is
    detached and kept (the path test_volumes_fleet.py's retention test takes)."""
    worker = await placed_with_volume(control, fake)
    (volume,) = fake.volumes.values()
    await beat(worker, ["alice"], [str(volume["id"])])
    assert (await control.admin("DELETE", "/v1/users/alice"))[0] == 200
    await run(control)
    await beat(worker, [], [])  # the agent stopped the container and unmounted it
    await run(control)
    assert volume["server"] is None and volume_row(control, "alice")["state"] == "detached"
    return worker


async def resumed_lands_with_its_volume(
    control: ControlPlane, fake: HetznerFake, old: FakeWorker
) -> FakeWorker:
    (volume,) = fake.volumes.values()
    status, body = await control.admin("POST", "/v1/users/alice/resume")
    assert status == 200, body
    await run(control)  # no room on the old server: a new one, in the volume's location
    new = await boot(control, fake)
    assert new.key_id != old.key_id
    await run(control)  # alice is placed there; her volume follows
    _, alice = await control.admin("GET", "/v1/users/alice")
    assert alice["server_id"] == new.key_id, alice
    assert list(fake.volumes.values()) == [volume]  # the same volume, no second one
    assert volume["server"] == source_provider_id(fake, new)
    assert fake.servers[volume["server"]]["location"]["name"] == volume["location"]["name"]
    spec = (await specs(new))["alice"]
    assert spec["volume"]["id"] == str(volume["id"])
    row = volume_row(control, "alice")
    assert row["state"] == "attached" and row["last_error"] is None
    return new


async def test_a_resume_within_retention_attaches_the_same_volume_on_another_server(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud()
    old = await cancelled_and_detached(control, hetzner_fake)
    assert (await control.admin("POST", f"/v1/servers/{old.key_id}/cordon"))[0] == 200
    await resumed_lands_with_its_volume(control, hetzner_fake, old)
    _, alice = await control.admin("GET", "/v1/users/alice")
    assert alice["state"] in ("provisioning", "running") and alice["error"] is None
    _, listing = await control.admin("GET", "/v1/users")
    assert [u["volume"]["state"] for u in listing["users"]] == ["attached"]


async def test_a_resume_after_the_old_server_is_gone_attaches_the_same_volume(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud()
    old = await cancelled_and_detached(control, hetzner_fake)
    old_provider_id = source_provider_id(hetzner_fake, old)
    assert (await control.admin("POST", f"/v1/servers/{old.key_id}/drain"))[0] == 200
    await run(control)  # nothing holds it (the data is on the volume): it goes
    assert old_provider_id not in hetzner_fake.servers
    await resumed_lands_with_its_volume(control, hetzner_fake, old)
    assert "volume_attached" in await event_kinds(control)


async def test_a_resume_before_the_volume_left_the_old_server_moves_it_once_stopped(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    """Cancelled and resumed at once: the volume is still attached to the old server
    (cordoned) when alice is placed on a new one. It leaves the old one only once the
    old container stopped, and alice starts on the new one only with it."""
    control = await cloud()
    old = await placed_with_volume(control, hetzner_fake)
    (volume,) = hetzner_fake.volumes.values()
    vid = str(volume["id"])
    await beat(old, ["alice"], [vid])
    assert (await control.admin("DELETE", "/v1/users/alice"))[0] == 200
    assert (await control.admin("POST", f"/v1/servers/{old.key_id}/cordon"))[0] == 200
    assert (await control.admin("POST", "/v1/users/alice/resume"))[0] == 200
    await run(control)
    new = await boot(control, hetzner_fake)
    await run(control)
    assert volume["server"] == source_provider_id(hetzner_fake, old)  # still running there
    assert await specs(new) == {}  # never started without its volume
    await beat(old, [], [])  # the old container stopped, the volume unmounted
    await run(control)
    await run(control)
    assert volume["server"] == source_provider_id(hetzner_fake, new)
    assert (await specs(new))["alice"]["volume"]["id"] == vid
    assert len(hetzner_fake.volumes) == 1
