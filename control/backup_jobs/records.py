"""The `backup_jobs` table: one row per snapshot or restore asked of a worker. The only
writer of the table.

Contract: each function runs in the caller's transaction. A job is created `pending`
for the server its user's volume is attached to and the volume's provider id;
`apply` records an update from control/backup_jobs/decide.py, stamping `reported_at`
(last heard of), `started_at` (first `running` or `done`) and `finished_at` (done or failed,
the control plane's clock, which the schedule compares with). A finished row is
history: it is never changed again, but for one thing: a done snapshot whose snapshot
restic's retention forgot (`forget_snapshots`) moves its id from `result_snapshot_id`
to `snapshot_id` and says so in `error`, so it is listed and restorable no more while
its job stays in the history. A done snapshot row with a `result_snapshot_id` is a
snapshot the operator can restore (`listed`). `waive` records an operator's decision
that a volume may be deleted without its final snapshot: a `final-waived` row, finished
at once, never sent to a worker. `prune` forgets finished rows older than a moment,
except the `final-retention` and `final-waived` ones a volume's deletion waits on
(control/volumes/backups.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import aiosqlite

from control.backup_jobs.decide import Kind, Reason, Update
from control.db.store import Row, fetch_all

COLUMNS = (
    "id, user_id, kind, reason, snapshot_id, server_id, volume_id, state, attempts, "
    "retry_after, error, created_at, started_at, reported_at, finished_at, "
    "result_snapshot_id, bytes_added"
)


def new_job_id() -> str:
    return "job-" + secrets.token_hex(8)


async def create(
    conn: aiosqlite.Connection,
    *,
    user_id: str,
    kind: Kind,
    reason: Reason,
    server_id: str,
    volume_id: str,
    now: float,
    snapshot_id: str | None = None,
    attempts: int = 1,
) -> str:
    job_id = new_job_id()
    await conn.execute(
        "INSERT INTO backup_jobs (id, user_id, kind, reason, snapshot_id, server_id, "
        "volume_id, state, attempts, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
        (job_id, user_id, kind, reason, snapshot_id, server_id, volume_id, attempts, now),
    )
    return job_id


async def given_to(conn: aiosqlite.Connection, server_id: str, job_ids: Sequence[str]) -> list[Row]:
    """The jobs among `job_ids` that were given to `server_id`: the only ones its
    reports may touch."""
    if not job_ids:
        return []
    marks = ", ".join("?" for _ in job_ids)
    return await fetch_all(
        conn,
        f"SELECT {COLUMNS} FROM backup_jobs WHERE server_id = ? AND id IN ({marks})",
        (server_id, *job_ids),
    )


async def apply(conn: aiosqlite.Connection, job_id: str, update: Update, now: float) -> None:
    """Records `update` on an open job (a finished one is left as it is)."""
    await conn.execute(
        "UPDATE backup_jobs SET state = ?, reported_at = ?, "
        "started_at = CASE WHEN started_at IS NULL AND ? THEN ? ELSE started_at END, "
        "finished_at = CASE WHEN ? THEN ? ELSE finished_at END, "
        "result_snapshot_id = COALESCE(?, result_snapshot_id), "
        "bytes_added = COALESCE(?, bytes_added), error = COALESCE(?, error), "
        "retry_after = ? WHERE id = ? AND state IN ('pending', 'running')",
        (
            update.state,
            now,
            update.state != "failed",  # a job that never ran has no start
            now,
            update.finished,
            now,
            update.snapshot_id,
            update.bytes_added,
            update.error,
            update.retry_after,
            job_id,
        ),
    )


async def prune(conn: aiosqlite.Connection, before: float) -> None:
    await conn.execute(
        "DELETE FROM backup_jobs WHERE state IN ('done', 'failed') AND finished_at < ? "
        "AND reason NOT IN ('final-retention', 'final-waived')",
        (before,),
    )


async def listed(conn: aiosqlite.Connection, user_id: str, before: float) -> list[Row]:
    """The user's restorable snapshots that finished before `before`: id, result_snapshot_id."""
    return await fetch_all(
        conn,
        "SELECT id, result_snapshot_id FROM backup_jobs WHERE user_id = ? AND kind = 'snapshot' "
        "AND state = 'done' AND result_snapshot_id IS NOT NULL AND finished_at < ?",
        (user_id, before),
    )


async def forget_snapshots(conn: aiosqlite.Connection, job_ids: Sequence[str], by_job: str) -> None:
    """Marks these done snapshots as forgotten by the retention `by_job` applied."""
    for job_id in job_ids:
        await conn.execute(
            "UPDATE backup_jobs SET snapshot_id = result_snapshot_id, result_snapshot_id = NULL, "
            "error = ? WHERE id = ? AND kind = 'snapshot' AND state = 'done' "
            "AND result_snapshot_id IS NOT NULL",
            (f"forgotten by restic's retention (BACKUP_RETENTION), run by {by_job}", job_id),
        )


async def waive(conn: aiosqlite.Connection, user_id: str, why: str, now: float) -> str:
    """The operator's waiver of a volume's final snapshot, as a finished row."""
    job_id = new_job_id()
    await conn.execute(
        "INSERT INTO backup_jobs (id, user_id, kind, reason, state, error, created_at, "
        "finished_at) VALUES (?, ?, 'snapshot', 'final-waived', 'failed', ?, ?, ?)",
        (job_id, user_id, f"final snapshot waived by the operator: {why}", now, now),
    )
    return job_id
