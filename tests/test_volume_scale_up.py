"""Scale-up where a waiting user's volume is (issue 13), through the real autoscaler, the
real hcloud client and the fake Hetzner API (locations nbg1, then fsn1): a user whose
data is on a volume in fsn1 can only run in fsn1, so the server created for it is there,
not in the first configured location."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

from tests.fakes.hetzner import HetznerFake, agent_dist, fleet_settings, provider_with_timeout
from tests.fixtures import ControlPlane
from tests.test_autoscaler import add_users, run


def kept_volume(database: str, user_id: str, location: str) -> None:
    """A volume kept for the user (e.g. while it was suspended), detached, in `location`."""
    now = time.time()
    with sqlite3.connect(database, timeout=10) as conn:
        conn.execute(
            "INSERT INTO volumes (user_id, name, provider, provider_id, location, size_gb, "
            "device, state, created_at, updated_at) VALUES (?, ?, 'hetzner', '77', ?, 10, "
            "'/dev/disk/by-id/scsi-0HC_Volume_77', 'detached', ?, ?)",
            (user_id, f"cf-default-{user_id}", location, now, now),
        )


async def test_the_new_server_is_created_in_the_waiting_users_volume_location(
    control_factory: Any, hetzner_fake: HetznerFake, tmp_path: Path
) -> None:
    settings = fleet_settings(hetzner_fake, agent_dist(tmp_path / "dist"))
    assert settings["hetzner_locations"][0] != "fsn1"  # the default choice would be wrong
    # First no server may be created, so no run places alice before her volume is known.
    closed: ControlPlane = control_factory(
        provider_with_timeout(2.0, None), **settings | {"max_servers": 0}, user_volumes=True
    )
    await closed.start()
    await add_users(closed, "alice")
    await asyncio.to_thread(kept_volume, closed.settings.database_path, "alice", "fsn1")
    await closed.stop()
    control: ControlPlane = control_factory(
        provider_with_timeout(2.0, None), **settings, user_volumes=True
    )
    await control.start()
    await run(control)
    created = [s for s in hetzner_fake.servers.values() if s["name"].startswith("clawfleet-")]
    assert [s["datacenter"]["location"]["name"] for s in created] == ["fsn1"]
