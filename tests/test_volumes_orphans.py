"""The orphan volume sweep against the fake Hetzner API (control/volumes/orphans.py),
beside tests/test_volumes_fleet.py's: a volume whose `volumes` row is gone but whose
`clawfleet-user` label names a user that exists holds that customer's state and is
never deleted (adopted, or kept with an event), and a sweep whose database read fails
deletes nothing, volumes and servers alike (control/capacity/orphans.py)."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import pytest

from control.appkeys import SCALER
from control.capacity import orphans as server_orphans
from control.capacity.provisioning import Provisioner
from control.db.store import Store
from control.volumes import orphans as volume_orphans
from tests.fakes.hetzner import HetznerFake
from tests.fixtures import ControlPlane
from tests.test_autoscaler import OURS, event_kinds, run
from tests.test_volumes_fleet import (  # noqa: F401 (cloud: the fixture)
    Start,
    beat,
    cloud,
    db,
    placed_with_volume,
    volume_row,
)


async def cancelled_and_detached(control: ControlPlane, fake: HetznerFake) -> int:
    """alice cancelled within her retention, her volume detached and kept; its id."""
    worker = await placed_with_volume(control, fake)
    (volume,) = fake.volumes.values()
    await beat(worker, ["alice"], [str(volume["id"])])
    status, _ = await control.admin("DELETE", "/v1/users/alice")
    assert status in (200, 202, 204)
    await beat(worker, [], [])
    await run(control)
    assert volume["server"] is None and volume_row(control, "alice")["state"] == "detached"
    return int(volume["id"])


async def test_a_retained_users_volume_whose_row_was_lost_is_adopted_never_deleted(
    cloud: Start,  # noqa: F811 (the imported fixture)
    hetzner_fake: HetznerFake,
) -> None:
    control = await cloud()
    vid = await cancelled_and_detached(control, hetzner_fake)
    # A database restored from before the volume existed: alice's row is gone.
    await asyncio.to_thread(db, control, "DELETE FROM volumes WHERE user_id = 'alice'")
    for _ in range(5):
        await run(control)
        assert vid in hetzner_fake.volumes
    row = volume_row(control, "alice")
    assert (row["provider_id"], row["state"], row["server_id"]) == (str(vid), "detached", None)
    assert row["name"] == "cf-default-alice" and row["location"] == "nbg1"
    kinds = await event_kinds(control)
    assert kinds.count("orphan_volume_adopted") == 1 and "orphan_volume_deleted" not in kinds
    assert control.app is not None and control.app[SCALER].state.volume_sightings == {}


async def test_a_second_volume_of_an_existing_user_is_kept_and_reported_once(
    cloud: Start,  # noqa: F811 (the imported fixture)
    hetzner_fake: HetznerFake,
) -> None:
    control = await cloud()
    await placed_with_volume(control, hetzner_fake)  # alice has her volume
    assert control.app is not None
    provider = control.app[SCALER].provisioner.provider
    labels = {**OURS, "clawfleet-user": "alice"}
    extra = await provider.create_volume("cf-default-alice-restored", 10, "nbg1", labels)
    for _ in range(6):
        await run(control)
        assert int(extra.provider_id) in hetzner_fake.volumes
    assert volume_row(control, "alice")["provider_id"] != extra.provider_id
    kinds = await event_kinds(control)
    assert kinds.count("orphan_volume_kept") == 1 and "orphan_volume_deleted" not in kinds


async def closed_store(tmp_path: Path) -> Store:
    store = Store(str(tmp_path / "closed.db"))
    await store.open()
    await store.close()
    return store


async def test_a_failed_database_read_deletes_no_orphan_volume_nor_server(
    cloud: Start,  # noqa: F811 (the imported fixture)
    hetzner_fake: HetznerFake,
    tmp_path: Path,
) -> None:
    control = await cloud()
    assert control.app is not None
    p: Provisioner = control.app[SCALER].provisioner
    server = hetzner_fake.add_server("clawfleet-default-stray", dict(OURS))
    volume = await p.provider.create_volume("cf-default-ghost", 10, "nbg1", dict(OURS))
    await run(control)
    await run(control)  # both seen twice: the next sweep would delete them
    assert p.state.orphan_sightings == {str(server["id"]): 2}
    assert p.state.volume_sightings == {volume.provider_id: 2}
    broken = copy.copy(p)  # the same provider and memory, over a database it cannot read
    broken.store = await closed_store(tmp_path)
    for sweep in (server_orphans.sweep, volume_orphans.sweep):
        with pytest.raises(RuntimeError, match="store is not open"):
            await sweep(broken)
    assert server["id"] in hetzner_fake.servers
    assert int(volume.provider_id) in hetzner_fake.volumes
    assert p.state.orphan_sightings == {str(server["id"]): 2}  # the counts are kept
    assert p.state.volume_sightings == {volume.provider_id: 2}
