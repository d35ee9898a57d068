"""A cancelled user's final snapshot when no live server holds its volume (issue 13,
point 5): its server died and the volume was forced off it, so nothing mounts it.

Contract:
- `run(p)` ends the autoscaler's backup step (control/volumes/backups.py), with
  BACKUP_S3_ENDPOINT and USER_VOLUMES set. It takes each DETACHED volume whose user is
  cancelled (deprovisioned) or purged, that is in no move, and that still owes its final
  snapshot (control/backups `final_owed`: none finished and none waived since the later
  of its latest `final-retention` ask and the cancellation), once no job of the user is
  open, the last failed one's back-off is over and the volume's own back-off too.
- Such a volume is attached, for the job only, to a live server of ours in its location
  (`job_server`: active and taking work, its agent declared the fleet's features, a free
  volume slot as placement counts them, never above 16, read through the room index);
  the user has no spec (cancelled), so no container of it goes there. `attaching` to
  that server is recorded before the provider call. Once attached, one transaction
  records `attached`, the `final-retention` job there (it describes the volume: the
  agent mounts it for the job) and a bump of that server's generation; the server is
  notified. The volume step (runner.py) keeps the volume there while the job is open,
  then detaches it once the agent unmounted it; deletion at retention end follows as
  for any volume (`may_delete`). A failed job is asked again the same way after its
  back-off.
- A failed attach: the volume's `last_error` (beginning with KEPT) and a `volume_failed`
  event, and the volume's back-off. A call that certainly did not attach (not found,
  refused) puts the row back `detached` at once; one whose outcome is unknown (timeout,
  rate limit, busy) leaves it `attaching`, which the volume step unwinds with a detach
  (idempotent) after the back-off. A crash between the two records leaves the same.
- No such server in its location: the volume waits, `last_error` saying why (beginning
  with KEPT, which the volume step leaves as it is), one `volume_waiting` event per new
  reason; it is tried again every run. The operator's waiver (final_waiver.py) stays
  the way out.
- Each volume is its own try: the failure of one is logged and the next is taken.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import aiosqlite

from control.backup_jobs import decide
from control.backup_jobs import records as jobs
from control.backup_jobs.reports import job_of
from control.backups import final_owed
from control.capacity.providers.base import ProviderError, ProviderVolume
from control.capacity.provisioning import Provisioner
from control.db import events
from control.db.store import Row, fetch_all, fetch_one
from control.users.features import fleet_needs
from control.users.placement import Room
from control.users.rooms import rooms
from control.volumes import records, steps
from control.workers import servers

log = logging.getLogger(__name__)
KEPT = "kept until its final snapshot is done (docs/backups.md)"
DAY = 86400.0
# The attach may have happened: only a detach (idempotent) can tell, the volume step's.
UNKNOWN_OUTCOME = ("transient", "rate_limited")

# Run every autoscaler run over every cancelled user's detached volume, whose jobs may
# be weeks of scheduled ones: each subquery walks an index of backup_jobs from its end
# (the latest final ask is near it) or reads one entry (the latest done snapshot).
OWED_SQL = (
    "SELECT v.user_id, v.provider_id, v.name, v.location, v.size_gb, v.device, "
    "v.last_error, v.not_before, u.purge_after, "
    "(SELECT j.created_at FROM backup_jobs j WHERE j.user_id = v.user_id "
    "AND j.reason = 'final-retention' ORDER BY j.created_at DESC LIMIT 1) AS asked, "
    "(SELECT MAX(j.finished_at) FROM backup_jobs j WHERE j.user_id = v.user_id "
    "AND j.kind = 'snapshot' AND j.state = 'done') AS done "
    "FROM volumes v LEFT JOIN users u ON u.id = v.user_id "
    "WHERE v.state = 'detached' AND v.server_id IS NULL AND v.provider_id IS NOT NULL "
    "AND (u.id IS NULL OR u.state = 'deprovisioned') "
    "AND v.user_id NOT IN (SELECT user_id FROM relocations) ORDER BY v.user_id"
)


def job_server(found: Iterable[Room], location: str, needs: frozenset[str]) -> str | None:
    """Where a detached volume in `location` is attached for its final snapshot: a room
    that takes work there, has a free volume slot and an agent with `needs`; the fullest
    first (fewest free slots, then least free memory: best fit, as placement packs,
    and the emptiest servers are those scale-down deletes), ties to the lower id."""
    fits = [
        r
        for r in found
        if r.accepts_work
        and r.location == location
        and r.volume_slots > 0
        and r.features is not None
        and needs <= r.features
    ]
    if not fits:
        return None
    return min(fits, key=lambda r: (r.volume_slots, r.memory_free_mb, r.server_id)).server_id


def no_server(location: str) -> str:
    return (
        f"{KEPT}: no live server in {location} has a free volume slot to take it on; "
        "retried every run (an operator may waive it)"
    )


async def run(p: Provisioner) -> None:
    if not (p.settings.backups_enabled and p.settings.user_volumes):
        return
    lead = p.settings.retention_days * DAY  # purge_after - lead: when the user was cancelled
    for row in await p.store.fetch_all(OWED_SQL):
        now = p.clock()
        if row["not_before"] is not None and now < row["not_before"]:
            continue  # the volume's back-off after a failed call
        cancelled = row["purge_after"] - lead if row["purge_after"] is not None else None
        if not final_owed(row["asked"], row["done"], None, cancelled):
            continue  # a snapshot finished since: the common case, no waiver to read
        try:
            await _take(p, row, cancelled, now)
        except ProviderError as exc:
            await _failed(p, row, exc, now)
        except Exception:  # on purpose: one volume's trouble must not keep the others waiting
            log.exception("final snapshot of the detached volume of %s", row["user_id"])


async def _take(p: Provisioner, row: Row, cancelled: float | None, now: float) -> None:
    """Attaches the volume of `row` for its final snapshot, unless an operator waived it
    (or a job is open or backing off); or says why it waits."""
    if not final_owed(row["asked"], row["done"], await _waived(p, row), cancelled):
        return
    latest = await p.store.fetch_one(
        f"SELECT {jobs.COLUMNS} FROM backup_jobs WHERE user_id = ? "
        "ORDER BY created_at DESC, id DESC LIMIT 1",
        (row["user_id"],),
    )
    past = decide.history(row["done"], job_of(latest) if latest else None, now)
    if past.in_flight:
        return  # a job is open (it times out), or the failed one's back-off runs
    target = await p.store.write(lambda conn: _reserve(p, conn, row, now))
    if target is None:
        return
    server_id, server_provider_id = target
    await p.provider.attach(_volume(row), server_provider_id)

    async def attached(conn: aiosqlite.Connection) -> None:
        user_id, volume_id = row["user_id"], row["provider_id"]
        await records.set_state(conn, user_id, "attached", server_id, now)
        job_id = await jobs.create(
            conn,
            user_id=user_id,
            kind="snapshot",
            reason="final-retention",
            server_id=server_id,
            volume_id=volume_id,
            now=now,
            attempts=past.attempts,
        )
        await servers.bump_generation(conn, server_id)  # its set now carries the job
        what = f"to {server_id}, for its final snapshot only (job {job_id})"
        await events.record(
            conn, "volume_attached", what, server_id=server_id, user_id=user_id, at=now
        )
        what = f"snapshot {job_id} (final-retention) on {server_id}"
        await events.record(conn, "backup_requested", what, user_id=user_id, at=now)

    await p.store.write(attached)
    p.notify(server_id)


async def _reserve(
    p: Provisioner, conn: aiosqlite.Connection, row: Row, now: float
) -> tuple[str, str] | None:
    """In one transaction: the server to attach to, recorded `attaching` there (its slot
    is counted from now on), or None after recording why the volume waits."""
    user_id, location = row["user_id"], row["location"]
    chosen = job_server(await _rooms_in(p, conn, location), location, fleet_needs(p.settings))
    if chosen is None:
        reason = no_server(location)
        if row["last_error"] != reason:
            await records.waiting(conn, user_id, reason, now)
            await events.record(conn, "volume_waiting", reason, user_id=user_id, at=now)
        return None
    server = await fetch_one(conn, "SELECT provider_id FROM servers WHERE id = ?", (chosen,))
    assert server is not None and server["provider_id"]  # _rooms_in reads only such servers
    await records.set_state(conn, user_id, "attaching", chosen, now)
    return chosen, str(server["provider_id"])


async def _rooms_in(p: Provisioner, conn: aiosqlite.Connection, location: str) -> list[Room]:
    """The rooms of the active servers in `location` that exist at the provider, as this
    transaction sees them: through the room index when the app keeps one."""
    ids = [
        r["id"]
        for r in await fetch_all(
            conn,
            "SELECT id FROM servers WHERE status = 'active' AND location = ? "
            "AND provider_id IS NOT NULL ORDER BY id",
            (location,),
        )
    ]
    if not ids:
        return []
    index = p.room_index
    if index is None:
        return await rooms(conn, p.settings.plans, p.reserve, only=ids)
    return [room for sid in ids if (room := await index.room(conn, sid)) is not None]


async def _waived(p: Provisioner, row: Row) -> float | None:
    """When an operator last waived the final snapshot of the volume of `row`."""
    found = await p.store.fetch_one(
        "SELECT created_at FROM backup_jobs WHERE user_id = ? AND reason = 'final-waived' "
        "ORDER BY created_at DESC LIMIT 1",
        (row["user_id"],),
    )
    return found["created_at"] if found else None


def _volume(row: Row) -> ProviderVolume:
    return ProviderVolume(
        row["provider_id"], row["name"], row["location"], row["size_gb"], row["device"] or ""
    )


async def _failed(p: Provisioner, row: Row, exc: ProviderError, now: float) -> None:
    user_id = row["user_id"]
    held = await p.store.fetch_one(
        "SELECT server_id, failures FROM volumes WHERE user_id = ?", (user_id,)
    )
    failures = (held["failures"] if held else 0) + 1
    failure = steps.on_failure(exc.kind, exc.code, failures, exc.retry_after)
    server_id = held["server_id"] if held else None
    message = f"{KEPT}: attaching it to {server_id} for the snapshot failed: {failure.message}"
    log.warning("final snapshot of %s: attach to %s: %s [%s]", user_id, server_id, exc, exc.kind)

    async def apply(conn: aiosqlite.Connection) -> None:
        if exc.kind not in UNKNOWN_OUTCOME:  # it did not attach: nothing to unwind
            await records.set_state(conn, user_id, "detached", None, now)
        await records.failed(conn, user_id, message, now + failure.delay, now)
        detail = f"{message} ({exc}); next try in {failure.delay:.0f} s"
        await events.record(
            conn, "volume_failed", detail, server_id=server_id, user_id=user_id, at=now
        )

    await p.store.write(apply)
