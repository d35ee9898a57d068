"""Backup jobs where a user's volume is mounted: the autoscaler's backup step, the
operator's requests, and the final snapshot a volume's deletion waits for.

Contract:
- `run(p)` is one of the autoscaler's steps (after the volume step). It first fails
  every open job no report mentioned for decide.JOB_TIMEOUT (whatever the settings)
  and forgets finished ones older than BACKUP_RETENTION keeps snapshots (`kept_for`).
  Then, with BACKUP_S3_ENDPOINT set, it asks for the final snapshots
  (control/backups/triggers.py: a draining holder, a cancelled user) and the scheduled
  ones (control/backups/schedule.py) of users whose volume is attached to a server
  whose agent reports it mounted: as many a run as `snapshot_budget` says from the
  users due, the runs (one every AUTOSCALE_INTERVAL) left in their interval and the
  steady rate of all, at most MAX_PER_RUN. A user with a job
  open, or whose last automatic job failed less than its back-off ago, is not asked
  again; the next try counts the attempts in a row. Last, a cancelled user's volume
  that no live server holds gets its final snapshot on one it is attached to for the
  job (control/volumes/final_attach.py).
- A job is created in one transaction with a bump of its server's generation, and that
  server is notified: its long-poll returns with the job (control/workers/assignments.py).
- `request(...)`: the operator's snapshot or restore. Conflict when backups are off,
  the user's volume is not attached and mounted, or a job of the user is open;
  BadRequest for a snapshot id that is not one of the user's done snapshots
  (`snapshot_forgotten` for one restic's retention forgot, `unknown_snapshot` else).
- `on_cancelled(conn, user_id, now)`: billing's rules call it (through their Policy,
  with backups on) in the transaction that deprovisions the user; with its volume
  attached to a live server it creates the final snapshot job there and returns that
  server, whose generation the same transaction bumps: no worker can read a set
  without the container and without the job (the step above is the backstop).
- `on_drain_move(conn, user_id, source, now)`: the same for a drain-and-delete, in the
  transaction that moves the user off its draining server (control/capacity/
  scale_down.py, with backups on): the set that withdraws the container carries the
  `final-drain` job, so the old agent never unmounts before it arrives.
- `may_delete(p, user_id)`: with backups on, a volume is deleted only after a snapshot
  that finished after its latest final snapshot was asked for (`final_cleared`), or once
  an operator waived that snapshot (control/volumes/final_waiver.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import aiosqlite

from control.backup_jobs import decide, records
from control.backup_jobs.decide import History
from control.backup_jobs.reports import job_of
from control.backups import (
    Candidate,
    FinalReason,
    UserBackupState,
    due_for_snapshot,
    final_cleared,
    final_snapshot_reason,
    runs_left,
    snapshot_budget,
    steady_rate,
)
from control.capacity.provisioning import Provisioner
from control.db import events
from control.db.store import Row, Store, fetch_one
from control.errors import BadRequest, Conflict
from control.settings import Settings
from control.volumes import final_attach
from control.workers import servers

MAX_PER_RUN = 200  # scheduled snapshots asked for in one run at most: a run stays cheap
SNAPSHOT_ID = re.compile(r"[0-9a-f]{8,64}")
DAY = 86400.0

MOUNTED_SQL = (
    "SELECT v.user_id, v.provider_id, v.server_id, u.state, u.plan, u.purge_after, "
    "s.draining, s.report FROM volumes v JOIN users u ON u.id = v.user_id "
    "JOIN servers s ON s.id = v.server_id WHERE v.state = 'attached' "
    "AND s.status IN ('active', 'unhealthy') "
    # A move to another location asks for its own jobs until its restore is done.
    "AND v.user_id NOT IN (SELECT user_id FROM relocations WHERE phase IN "
    "('stopping', 'snapshot', 'creating', 'attaching', 'restoring'))"
)
# Per attached volume, indexed lookups only: the table keeps weeks of jobs per user.
HISTORY_SQL = (
    f"SELECT {', '.join('j.' + c for c in records.COLUMNS.split(', '))}, "
    "(SELECT MAX(d.finished_at) FROM backup_jobs d "
    "WHERE d.user_id = j.user_id AND d.kind = 'snapshot' AND d.state = 'done') AS last_done "
    "FROM volumes v JOIN backup_jobs j ON j.id = (SELECT k.id FROM backup_jobs k "
    "WHERE k.user_id = v.user_id ORDER BY k.created_at DESC, k.id DESC LIMIT 1) "
    "WHERE v.state = 'attached'"
)


@dataclass(frozen=True)
class Mounted:
    user_id: str
    volume_id: str
    server_id: str
    state: str
    plan: str
    purge_after: float | None
    draining: bool


def _only(sql: str, user_id: str | None) -> tuple[str, tuple[str, ...]]:
    """`sql` (over volumes v) narrowed to one user's volume, when one is named."""
    return (sql, ()) if user_id is None else (f"{sql} AND v.user_id = ?", (user_id,))


def _mounted_here(row: Row) -> bool:
    try:
        report = json.loads(row["report"] or "{}")
    except ValueError:
        return False
    volumes = report.get("volumes") or []
    return any(v.get("id") == row["provider_id"] and v.get("state") == "mounted" for v in volumes)


async def mounted(store: Store, user_id: str | None = None) -> dict[str, Mounted]:
    """Users whose volume is attached to a live server whose agent reports it mounted."""
    return {
        r["user_id"]: Mounted(
            r["user_id"],
            r["provider_id"],
            r["server_id"],
            r["state"],
            r["plan"],
            r["purge_after"],
            bool(r["draining"]),
        )
        for r in await store.fetch_all(*_only(MOUNTED_SQL, user_id))
        if r["provider_id"] and _mounted_here(r)
    }


async def histories(store: Store, now: float, user_id: str | None = None) -> dict[str, History]:
    """The job history of each user with an attached volume, from its latest job."""
    return {
        r["user_id"]: decide.history(r["last_done"], job_of(r), now)
        for r in await store.fetch_all(*_only(HISTORY_SQL, user_id))
    }


async def create_job(
    store: Store,
    notify: Callable[..., None],
    user: Mounted,
    kind: decide.Kind,
    reason: decide.Reason,
    now: float,
    snapshot_id: str | None = None,
    attempts: int = 1,
) -> str:
    async def apply(conn: aiosqlite.Connection) -> str:
        job_id = await records.create(
            conn,
            user_id=user.user_id,
            kind=kind,
            reason=reason,
            server_id=user.server_id,
            volume_id=user.volume_id,
            now=now,
            snapshot_id=snapshot_id,
            attempts=attempts,
        )
        await servers.bump_generation(conn, user.server_id)  # its long-poll brings the job
        what = f"{kind} {job_id} ({reason}) on {user.server_id}"
        await events.record(conn, "backup_requested", what, user_id=user.user_id, at=now)
        return job_id

    job_id = await store.write(apply)
    notify(user.server_id)
    return job_id


async def run(p: Provisioner) -> None:
    now = p.clock()
    await time_out(p.store, p.notify, now)
    before = now - decide.kept_for(p.settings.backup_retention)
    await p.store.write(lambda conn: records.prune(conn, before))
    if not p.settings.backups_enabled:
        return
    users = await mounted(p.store)
    history = await histories(p.store, now)
    asked = await _finals(p, users, history, now)
    candidates = [
        Candidate(
            u.user_id,
            u.plan,
            u.state,
            history.get(u.user_id, History()).last_done,
            history.get(u.user_id, History()).in_flight or u.user_id in asked,
        )
        for u in users.values()
    ]
    plans, every = p.settings.plans, p.settings.autoscale_interval
    due = due_for_snapshot(candidates, plans, now)
    by_id = {c.user_id: c for c in candidates}
    left = [runs_left(by_id[u], plans, now, every) for u in due]
    budget = snapshot_budget(left, steady_rate(candidates, plans, every), MAX_PER_RUN)
    for user_id in due[:budget]:
        attempts = history.get(user_id, History()).attempts
        await create_job(
            p.store, p.notify, users[user_id], "snapshot", "scheduled", now, attempts=attempts
        )
    await final_attach.run(p)  # cancelled users' volumes no live server holds


async def _finals(
    p: Provisioner, users: dict[str, Mounted], history: dict[str, History], now: float
) -> set[str]:
    """Asks for the final snapshots that are owed; returns the users asked."""
    lead = p.settings.retention_days * DAY  # the window opens when the user is cancelled
    asked: set[str] = set()
    for user in users.values():
        past = history.get(user.user_id, History())
        if past.in_flight:
            continue
        since = await _first_final(p.store, user, "final-drain") if user.draining else None
        state = UserBackupState(
            user.user_id,
            user.state,
            last_snapshot_at=past.last_done,
            server_draining_since=(since or now) if user.draining else None,
            purge_after=user.purge_after,
        )
        reason = final_snapshot_reason(state, now, lead)
        if reason is None or reason is FinalReason.OPERATOR:
            continue
        why: decide.Reason = "final-drain" if reason is FinalReason.DRAIN else "final-retention"
        await create_job(p.store, p.notify, user, "snapshot", why, now, attempts=past.attempts)
        asked.add(user.user_id)
    return asked


async def _first_final(store: Store, user: Mounted, reason: str) -> float | None:
    """When the first final snapshot of this kind was asked for: what a later snapshot
    must have finished after (for a drain, on the server draining now)."""
    row = await store.fetch_one(
        "SELECT MIN(created_at) AS first FROM backup_jobs WHERE user_id = ? AND reason = ? "
        "AND (? = 'final-retention' OR server_id = ?)",
        (user.user_id, reason, reason, user.server_id),
    )
    return row["first"] if row and row["first"] is not None else None


async def time_out(store: Store, notify: Callable[..., None], now: float) -> None:
    rows = await store.fetch_all(
        f"SELECT {records.COLUMNS} FROM backup_jobs WHERE state IN ('pending', 'running')"
    )
    stale = [r for r in rows if decide.stale(job_of(r), now)]
    if not stale:
        return

    async def apply(conn: aiosqlite.Connection) -> None:
        for r in stale:
            minutes = decide.JOB_TIMEOUT / 60
            error = f"no report from {r['server_id']} for {minutes:.0f} min"
            await records.apply(conn, r["id"], decide.failed(job_of(r), error, now), now)
            await events.record(
                conn, "backup_failed", f"{r['id']}: {error}", user_id=r["user_id"], at=now
            )
            if r["server_id"]:
                await servers.bump_generation(conn, r["server_id"])

    await store.write(apply)
    notify(*sorted({r["server_id"] for r in stale if r["server_id"]}))


async def request(
    store: Store,
    settings: Settings,
    notify: Callable[..., None],
    user_id: str,
    snapshot_id: str | None,
    now: float,
) -> str:
    """The operator's snapshot (`snapshot_id` None) or restore of `snapshot_id`."""
    if not settings.backups_enabled:
        raise Conflict("backups are off: BACKUP_S3_ENDPOINT is not set", code="backups_off")
    user = (await mounted(store, user_id)).get(user_id)
    if user is None:
        raise Conflict(
            f"{user_id} has no volume attached and mounted: nothing to back up or restore onto",
            code="no_volume",
        )
    if (await histories(store, now, user_id)).get(user_id, History()).open:
        raise Conflict(f"a backup job of {user_id} is still open", code="backup_in_flight")
    if snapshot_id is None:
        return await create_job(store, notify, user, "snapshot", "operator", now)
    await check_snapshot(store, user_id, snapshot_id)
    return await create_job(store, notify, user, "restore", "operator", now, snapshot_id)


async def check_snapshot(store: Store, user_id: str, snapshot_id: str) -> None:
    """BadRequest unless `snapshot_id` is one of the user's snapshots restic still holds."""
    if not SNAPSHOT_ID.fullmatch(snapshot_id):
        raise BadRequest(f"snapshot_id: not a snapshot of {user_id}", code="unknown_snapshot")
    row = await store.fetch_one(
        "SELECT MAX(result_snapshot_id = ?) AS listed, MAX(snapshot_id = ?) AS forgotten "
        "FROM backup_jobs WHERE user_id = ? AND kind = 'snapshot' AND state = 'done'",
        (snapshot_id, snapshot_id, user_id),
    )
    if row is not None and row["listed"]:
        return
    if row is not None and row["forgotten"]:
        raise BadRequest(
            f"snapshot_id: {snapshot_id} was forgotten by the retention (BACKUP_RETENTION);"
            f" GET /v1/users/{user_id}/backups lists the snapshots that remain",
            code="snapshot_forgotten",
        )
    raise BadRequest(f"snapshot_id: not a snapshot of {user_id}", code="unknown_snapshot")


async def may_delete(p: Provisioner, user_id: str) -> bool:
    """Whether the volume of `user_id` (purged) may be deleted: backups are off, or its
    final snapshot is done."""
    if not p.settings.backups_enabled:
        return True
    row = await p.store.fetch_one(
        "SELECT MAX(CASE WHEN reason = 'final-retention' THEN created_at END) AS asked, "
        "MAX(CASE WHEN kind = 'snapshot' AND state = 'done' THEN finished_at END) AS done, "
        # The operator's explicit decision (control/volumes/final_waiver.py).
        "MAX(CASE WHEN reason = 'final-waived' THEN created_at END) AS waived "
        "FROM backup_jobs WHERE user_id = ?",
        (user_id,),
    )
    if row is None:
        return False
    return final_cleared(row["asked"], row["done"], row["waived"])


async def on_cancelled(conn: aiosqlite.Connection, user_id: str, now: float) -> set[str]:
    """In the transaction that deprovisions `user_id`: its final snapshot, asked of the
    live server its volume is attached to; returns that server (its generation is bumped
    by the caller's commit), or nothing when there is no such volume. The job describes
    the volume, so the agent mounts it for the job even if it has unmounted it already."""
    return await _final_in(conn, user_id, "final-retention", None, now)


async def on_drain_move(
    conn: aiosqlite.Connection, user_id: str, source: str, now: float
) -> set[str]:
    """In the transaction that moves `user_id` off draining `source` (which withdraws its
    container there: with volumes it runs only where its volume is): its final-drain
    snapshot, asked of `source` while the volume is attached there; returns `source` for
    the caller's commit to bump, or nothing. The set without the container carries the
    job, so the agent keeps the volume mounted for it (and the volume step does not
    detach before the job ends, control/volumes/runner.py)."""
    return await _final_in(conn, user_id, "final-drain", source, now)


async def _final_in(
    conn: aiosqlite.Connection,
    user_id: str,
    reason: decide.Reason,
    server_id: str | None,
    now: float,
) -> set[str]:
    """A final snapshot job of the volume attached to a live server (`server_id`, when
    named), in the caller's transaction; the server it is asked of."""
    row = await fetch_one(
        conn,
        "SELECT v.provider_id, v.server_id FROM volumes v JOIN servers s ON s.id = v.server_id "
        "WHERE v.user_id = ? AND v.state = 'attached' AND s.status IN ('active', 'unhealthy') "
        "AND (? IS NULL OR v.server_id = ?)",
        (user_id, server_id, server_id),
    )
    if row is None or not row["provider_id"]:
        return set()
    job_id = await records.create(
        conn,
        user_id=user_id,
        kind="snapshot",
        reason=reason,
        server_id=row["server_id"],
        volume_id=row["provider_id"],
        now=now,
    )
    what = f"snapshot {job_id} ({reason}) on {row['server_id']}"
    await events.record(conn, "backup_requested", what, user_id=user_id, at=now)
    return {row["server_id"]}
