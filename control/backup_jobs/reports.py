"""A worker's backup reports, recorded on the jobs it was given (the heartbeat's part).

Contract: `record(conn, server_id, reports, now)` runs in the heartbeat's transaction.
It touches only jobs given to `server_id` (a report naming another worker's job, or a
job that does not exist, is ignored: a worker is trusted with nothing it was not
given), applies control/backup_jobs/decide.py `on_report` to each, and returns True
when a job finished, since a finished job leaves that worker's assignments (and a
finished restore gives the user's container back): the caller bumps its generation.
A snapshot that finishes `done` with `kept` (the snapshots its retention left in the
repository) marks the user's listed snapshots that finished before that job was asked
for and are not kept as forgotten (`decide.forgotten`, `records.forget_snapshots`):
its prune saw them, so they are gone from the repository, and no longer offered.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import aiosqlite

from control.backup_jobs import decide, records
from control.db.store import Row
from shared.protocol import BackupReport


def job_of(row: Row) -> decide.Job:
    return decide.Job(
        kind=row["kind"],
        reason=row["reason"],
        state=row["state"],
        attempts=row["attempts"],
        created_at=row["created_at"],
        reported_at=row["reported_at"],
        retry_after=row["retry_after"],
    )


async def record(
    conn: aiosqlite.Connection, server_id: str, reports: Sequence[BackupReport], now: float
) -> bool:
    rows = {r["id"]: r for r in await records.given_to(conn, server_id, [b.id for b in reports])}
    finished = False
    for report in reports:
        row = rows.get(report.id)
        if row is None:
            continue
        said = decide.Report(
            report.state, report.snapshot_id, report.bytes_added, report.error, tuple(report.kept)
        )
        update = decide.on_report(job_of(row), said, now, random.random())
        if update is None:
            continue
        await records.apply(conn, report.id, update, now)
        finished = finished or update.finished
        if update.state == "done" and row["kind"] == "snapshot" and said.kept:
            await _forget_pruned(conn, row, said.kept)
    return finished


async def _forget_pruned(conn: aiosqlite.Connection, row: Row, kept: Sequence[str]) -> None:
    listed = await records.listed(conn, row["user_id"], before=row["created_at"])
    gone = decide.forgotten([(r["id"], r["result_snapshot_id"]) for r in listed], kept)
    await records.forget_snapshots(conn, gone, by_job=row["id"])
