"""The orphan volume sweep against the fake Hetzner API (control/volumes/orphans.py),
beside tests/test_volumes_fleet.py's: a volume whose `volumes` row is gone but whose
`clawfleet-user` label names a user that exists holds that customer's state and is
never deleted (adopted, or kept with an event); one that names no user is kept until
RETENTION_DAYS after its creation (it may hold the state of a customer a restored
database forgot); and a sweep whose database read fails deletes nothing, volumes and
servers alike (control/capacity/orphans.py)."""

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


@pytest.mark.parametrize(
    ("created_at", "retention_days", "until"),
    [
        (1000.0, 30.0, 1000.0 + 30 * 86400),
        (1000.0, 0.0, 1000.0),  # no retention: as soon as three sweeps saw it
        (None, 30.0, None),  # the provider gave no age: never by itself
    ],
)
def test_an_unowned_volume_is_kept_for_the_retention_after_its_creation(
    created_at: float | None, retention_days: float, until: float | None
) -> None:
    assert volume_orphans.kept_until(created_at, retention_days) == until


async def test_a_young_volume_no_user_owns_is_kept_untouched_and_said_once(
    cloud: Start,  # noqa: F811 (the imported fixture)
    hetzner_fake: HetznerFake,
) -> None:
    """A database restored from before a customer signed up: their volume carries our
    labels and a user id no row knows. It stays attached and whole through many sweeps,
    with one event saying until when; once it is older than RETENTION_DAYS it goes."""
    control = await cloud()
    worker = await placed_with_volume(control, hetzner_fake)
    (volume,) = hetzner_fake.volumes.values()
    await beat(worker, ["alice"], [str(volume["id"])])
    db(control, "DELETE FROM volumes WHERE user_id = 'alice'")  # the restored database
    db(control, "DELETE FROM users WHERE id = 'alice'")
    for _ in range(5):
        await run(control, scheduled=True)
    assert hetzner_fake.volumes[volume["id"]]["server"] is not None  # never detached
    kept = [k for k in await event_kinds(control) if k.startswith("orphan_volume")]
    assert kept == ["orphan_volume_kept"]

    hetzner_fake.volumes[volume["id"]]["created"] = "2026-01-01T00:00:00+00:00"
    for _ in range(3):
        await run(control, scheduled=True)
    assert volume["id"] not in hetzner_fake.volumes  # detached, then deleted
    assert "orphan_volume_deleted" in await event_kinds(control)
