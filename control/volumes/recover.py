"""The operator's way out when a user's volume is lost at the provider (issue 13,
docs/backups.md "A lost volume").

A volume that cannot be found leaves its user waiting with "restore needed"
(control/volumes/steps.py `on_failure`), and nothing ever gives that user a new volume
on its own. Two operator actions end the wait:

- `from_snapshot(p, user_id, snapshot_id)` (POST /v1/users/{id}/recover): a recovery,
  which is a move with no source (control/volumes/relocation.py): a new volume in the
  lost volume's location, attached to the server the user is placed on, the chosen
  snapshot restored onto it with the user's spec withheld, then the user starts on it.
  The lost volume's row is recorded detached in the same transaction (the server it
  named is bumped): no set names the lost volume again, so no agent starts the
  container on what an old mount of it may still hold.
  Each phase is recorded before it acts (control/volumes/relocate.py runs it), so a
  crash resumes. Conflict `backups_off` without BACKUP_S3_ENDPOINT, `not_placed` until
  the user is placed on a live server in the volume's location (the autoscaler places a
  waiting user there), `backup_in_flight` while a job of the user is open; BadRequest
  for a snapshot that is not one of the user's (control/volumes/backups.py).
- `empty(p, user_id, accept, reason)` (POST /v1/users/{id}/recover-empty): the loud,
  explicit choice to start the user on an EMPTY new volume. `accept` must repeat the
  user id (BadRequest `confirmation_required`) and `reason` say why; with backups on it
  is refused while the user has a snapshot to recover from (Conflict
  `snapshot_exists`). The volume row is forgotten with a `volume_replaced_empty` event
  in one transaction; the volume step then creates and attaches a blank volume as for a
  new user. Never automatic.

Both: NotFound for an unknown user; Conflict `no_volume` without a volume with a
provider id, `move_in_progress` while a move or a recovery runs, and `volume_exists`
while the provider still lists the volume (by the labels it was created with: our
cluster's and the user's). A failed listing is the provider's error (503): nothing is
decided on a listing that could not be read. The checks are repeated in the write
transaction, so a concurrent change is refused rather than overwritten.
"""

from __future__ import annotations

import aiosqlite

from control.capacity.provisioning import Provisioner
from control.db import events
from control.db.store import Row, fetch_one
from control.errors import BadRequest, Conflict, NotFound
from control.volumes import records, relocations, steps
from control.volumes.backups import check_snapshot
from control.volumes.relocate_start import new_volume_name
from control.workers import servers

ALIVE = ("provisioning", "active", "unhealthy")


async def from_snapshot(p: Provisioner, user_id: str, snapshot_id: str) -> None:
    if not p.settings.backups_enabled:
        raise Conflict(
            "a recovery restores a snapshot, and backups are off (BACKUP_S3_ENDPOINT is not "
            "set); POST /v1/users/{id}/recover-empty starts the user on an empty volume",
            code="backups_off",
        )
    await check_snapshot(p.store, user_id, snapshot_id)
    volume = await _lost(p, user_id)

    async def begin(conn: aiosqlite.Connection) -> str | None:
        fresh = await _unchanged(conn, user_id, volume)
        target = await _target(conn, user_id, fresh)
        if await fetch_one(
            conn,
            "SELECT id FROM backup_jobs WHERE user_id = ? AND state IN ('pending', 'running')",
            (user_id,),
        ):
            raise Conflict(f"a backup job of {user_id} is still open", code="backup_in_flight")
        name = new_volume_name(p.settings.cluster_name, user_id, fresh["location"])
        now = p.clock()
        await relocations.begin_recovery(conn, fresh, target, name, snapshot_id, now)
        # The lost volume is attached nowhere: no set carries the user until the swap
        # (a set naming it would start the container on whatever its old mount holds).
        await records.set_state(conn, user_id, "detached", None, now)
        if fresh["server_id"]:
            await servers.bump_generation(conn, fresh["server_id"])
        what = (
            f"operator: its volume {fresh['name']} ({fresh['provider_id']}) is gone at the "
            f"provider; snapshot {snapshot_id} is restored onto a new volume {name} on {target}"
        )
        await events.record(conn, "volume_recovery", what, user_id=user_id, at=now)
        return str(fresh["server_id"]) if fresh["server_id"] else None

    held = await p.store.write(begin)
    if held:
        p.notify(held)


async def empty(p: Provisioner, user_id: str, accept: str, reason: str) -> None:
    if accept != user_id:
        raise BadRequest(
            f"accept_data_loss: must be the user id ({user_id}): this starts the user on an "
            "EMPTY volume, its state lost",
            code="confirmation_required",
        )
    if not reason.strip():
        raise BadRequest("reason: say why the state is given up", code="confirmation_required")
    if p.settings.backups_enabled and await _snapshot_of(p, user_id):
        raise Conflict(
            f"{user_id} has snapshots (GET /v1/users/{user_id}/backups): recover from one "
            f"(POST /v1/users/{user_id}/recover) instead of starting it empty",
            code="snapshot_exists",
        )
    volume = await _lost(p, user_id)

    async def forget(conn: aiosqlite.Connection) -> None:
        fresh = await _unchanged(conn, user_id, volume)
        await records.forget(conn, user_id)
        what = (
            f"OPERATOR CHOICE, STATE LOST: {user_id} starts on an EMPTY new volume; its "
            f"volume {fresh['name']} ({fresh['provider_id']}) is gone at the provider and no "
            f"snapshot holds its state. Reason: {reason.strip()}"
        )
        await events.record(conn, "volume_replaced_empty", what, user_id=user_id, at=p.clock())

    await p.store.write(forget)


async def _lost(p: Provisioner, user_id: str) -> Row:
    """The user's volume row, once the provider confirmed the volume is gone."""
    user = await p.store.fetch_one("SELECT id FROM users WHERE id = ?", (user_id,))
    if user is None:
        raise NotFound(f"no user {user_id}")
    volume = await p.store.fetch_one("SELECT * FROM volumes WHERE user_id = ?", (user_id,))
    if not p.settings.user_volumes or volume is None or not volume["provider_id"]:
        raise Conflict(f"{user_id} has no volume to recover", code="no_volume")
    if await p.store.fetch_one("SELECT phase FROM relocations WHERE user_id = ?", (user_id,)):
        raise Conflict(f"{user_id} is already moving or recovering", code="move_in_progress")
    labels = {**p.labels, "clawfleet-user": user_id}
    listed = {v.provider_id for v in await p.provider.list_volumes(labels)}
    if volume["provider_id"] in listed:
        raise Conflict(
            f"the volume {volume['name']} ({volume['provider_id']}) of {user_id} still exists "
            "at the provider: nothing was changed; once it is attached and mounted, "
            f"POST /v1/users/{user_id}/restore restores a snapshot onto it",
            code="volume_exists",
        )
    return volume


async def _unchanged(conn: aiosqlite.Connection, user_id: str, seen: Row) -> Row:
    """The volume row again, in the write: refused if it changed since the listing."""
    fresh = await records.get(conn, user_id)
    if fresh is None or fresh["provider_id"] != seen["provider_id"]:
        raise Conflict(f"the volume of {user_id} changed meanwhile: ask again", code="conflict")
    if await relocations.get(conn, user_id) is not None:
        raise Conflict(f"{user_id} is already moving or recovering", code="move_in_progress")
    return fresh


async def _target(conn: aiosqlite.Connection, user_id: str, volume: Row) -> str:
    """The live server the user is placed on, in the volume's location."""
    row = await fetch_one(
        conn,
        "SELECT u.state, u.server_id, s.status, s.location, s.provider_id FROM users u "
        "LEFT JOIN servers s ON s.id = u.server_id WHERE u.id = ?",
        (user_id,),
    )
    placed = row is not None and row["state"] in steps.PLACED and row["status"] in ALIVE
    if row is None or not placed or not row["provider_id"]:
        raise Conflict(
            f"{user_id} is not placed on a live server yet: ask again once it is (the "
            f"autoscaler places a waiting user in {volume['location']})",
            code="not_placed",
        )
    if row["location"] != volume["location"]:
        raise Conflict(
            f"{user_id} is placed in {row['location']} but its volume was in "
            f"{volume['location']}: move it back there first",
            code="not_placed",
        )
    return str(row["server_id"])


async def _snapshot_of(p: Provisioner, user_id: str) -> bool:
    row = await p.store.fetch_one(
        "SELECT 1 FROM backup_jobs WHERE user_id = ? AND kind = 'snapshot' AND state = 'done' "
        "AND result_snapshot_id IS NOT NULL LIMIT 1",
        (user_id,),
    )
    return row is not None
