"""The operator's way out for a volume whose final snapshot can never be taken.

With backups on, a cancelled user's volume is deleted at retention end only after its
final snapshot (control/volumes/backups.py `may_delete`; a volume no live server holds
is attached to one for it, control/volumes/final_attach.py). When that snapshot keeps
failing, or no live server in the volume's location can take it, the volume would be
kept forever, saying so on the user. `waive(...)` is the explicit, recorded decision to
let it go without one (`POST /v1/users/{id}/backups/waive-final`, docs/backups.md).

Contract: `waive(store, settings, user_id, why, now)` writes, in one transaction, a
`final-waived` row (control/backup_jobs/records.py `waive`) and a
`final_snapshot_waived` event carrying the operator's reason; the volume step then
deletes the volume once retention is over (it never shortens retention). Refused
(Conflict) while backups are off (nothing waits then), for a user who is not cancelled
(running, suspended, pending: their volume is not going away), and while a job of the
user is open (it may still make the snapshot); NotFound when the user has no volume;
BadRequest without a reason.
"""

from __future__ import annotations

import aiosqlite

from control.backup_jobs import records as jobs
from control.db import events
from control.db.store import Store
from control.errors import BadRequest, Conflict, NotFound
from control.settings import Settings

MAX_REASON = 200


async def waive(store: Store, settings: Settings, user_id: str, why: str, now: float) -> str:
    """Records that the volume of `user_id` may be deleted without its final snapshot;
    returns the waiver's row id."""
    why = " ".join(why.split())
    if not why or len(why) > MAX_REASON:
        raise BadRequest(f"reason: say why, in 1 to {MAX_REASON} characters", code="bad_reason")
    if not settings.backups_enabled:
        raise Conflict("backups are off: no volume waits for a snapshot", code="backups_off")
    row = await store.fetch_one(
        "SELECT v.user_id, u.state, (SELECT COUNT(*) FROM backup_jobs j WHERE j.user_id = "
        "v.user_id AND j.state IN ('pending', 'running')) AS open FROM volumes v "
        "LEFT JOIN users u ON u.id = v.user_id WHERE v.user_id = ?",
        (user_id,),
    )
    if row is None:
        raise NotFound(f"{user_id} has no volume", code="no_volume")
    if row["state"] not in (None, "deprovisioned"):
        raise Conflict(
            f"{user_id} is {row['state']}: only a cancelled user's volume waits for a final "
            "snapshot",
            code="not_cancelled",
        )
    if row["open"]:
        raise Conflict(f"a backup job of {user_id} is still open", code="backup_in_flight")

    async def apply(conn: aiosqlite.Connection) -> str:
        waiver = await jobs.waive(conn, user_id, why, now)
        message = f"{waiver}: the volume may be deleted without its final snapshot: {why}"
        await events.record(conn, "final_snapshot_waived", message, user_id=user_id, at=now)
        return waiver

    return await store.write(apply)
