"""The source of a move to another location holds the user until the old volume leaves
it: before the move's snapshot that volume is the user's only state, so the source is
never taken for empty (scale-down would delete it, and the move would be called off)
and the old volume still takes one of its attachment slots."""

from __future__ import annotations

import asyncio
import sqlite3

from tests.fakes.hetzner import HetznerFake
from tests.fixtures import ControlPlane
from tests.test_autoscaler import run
from tests.test_backup_jobs import BACKUPS
from tests.test_volumes_fleet import Start, cloud
from tests.test_volumes_relocation import moving

__all__ = ["cloud"]


def empty_since(control: ControlPlane, server_id: str) -> float | None:
    with sqlite3.connect(control.settings.database_path, timeout=10) as conn:
        row = conn.execute("SELECT empty_since FROM servers WHERE id = ?", (server_id,)).fetchone()
    return None if row is None else row[0]


async def test_the_source_of_a_move_is_not_empty_until_the_old_volume_left(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud(**BACKUPS)
    source, _ = await moving(control, hetzner_fake)
    await run(control)
    assert await asyncio.to_thread(empty_since, control, source.key_id) is None
    # Once the move is forgotten the source is empty like any other.
    with sqlite3.connect(control.settings.database_path, timeout=10) as conn:
        conn.execute("DELETE FROM relocations")
    await run(control)
    assert await asyncio.to_thread(empty_since, control, source.key_id) is not None
