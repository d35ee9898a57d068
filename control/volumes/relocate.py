"""Moves to another location through a backup and a restore (issue 13): the run that
applies each move's next action (control/volumes/relocation.py).

Contract:
- A move is started by control/volumes/relocate_start.py, which records it `stopping`.
- `run(p)` is called by the volume step (control/volumes/runner.py) every autoscaler
  run, which leaves these users' volumes to it until the swap. Each action is recorded
  before or with the call it stands for (control/volumes/relocations.py); a job is
  created in the transaction that records it, with its server's generation bumped.
- A provider failure leaves the move waiting: `last_error` on the move and on the
  user's volume, a `move_failed` event, and no call before the back-off of
  control/volumes/steps.py `on_failure`. A wait is a `move_waiting` event per new reason.
- The old volume is deleted once the user ran on the target with its restored state;
  the `move` snapshot it was copied through stays in the repository for its retention.
- A recovery (no source: the old volume is lost, control/volumes/recover.py) ends once
  the user ran on the new volume, with a `volume_recovered` event; the lost volume is
  never called (no detach, no delete). Called off, the user waits for it again.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import aiosqlite

from control.backup_jobs import records as jobs
from control.capacity.providers.base import ProviderError, ProviderVolume
from control.capacity.provisioning import Provisioner
from control.db import events
from control.db.store import Row
from control.users import records as users
from control.volumes import records, relocation, relocations, steps
from control.workers import servers

MAX_STEPS = 6
ALIVE = ("provisioning", "active", "unhealthy")
NAME_MAX = 64  # Hetzner's
MOVE_SQL = (
    "SELECT r.*, u.state AS user_state, u.server_id AS user_server, s.status AS source_status, "
    "s.report AS source_report, s.generation AS source_generation, "
    "s.applied_generation AS source_applied, t.provider_id AS target_provider_id, "
    "sj.state AS sj_state, sj.attempts AS sj_attempts, sj.retry_after AS sj_retry, "
    "sj.error AS sj_error, sj.result_snapshot_id AS sj_snapshot, rj.state AS rj_state, "
    "rj.attempts AS rj_attempts, rj.retry_after AS rj_retry, rj.error AS rj_error, "
    "(SELECT COUNT(*) FROM backup_jobs b WHERE b.user_id = r.user_id "
    "AND b.state IN ('pending', 'running') AND b.id IS NOT r.snapshot_job "
    "AND b.id IS NOT r.restore_job) AS other_jobs "
    "FROM relocations r LEFT JOIN users u ON u.id = r.user_id "
    "LEFT JOIN servers s ON s.id = r.source_server LEFT JOIN servers t ON t.id = r.target_server "
    "LEFT JOIN backup_jobs sj ON sj.id = r.snapshot_job "
    "LEFT JOIN backup_jobs rj ON rj.id = r.restore_job WHERE r.user_id = ?"
)


async def run(p: Provisioner) -> None:
    if not p.settings.user_volumes:
        return
    for row in await p.store.fetch_all("SELECT user_id FROM relocations ORDER BY user_id"):
        for _ in range(MAX_STEPS):
            if not await _advance(p, row["user_id"]):
                break


async def _advance(p: Provisioner, user_id: str) -> bool:
    """One action of one move; True when it was done and another may follow."""
    row = await p.store.fetch_one(MOVE_SQL, (user_id,))
    now = p.clock()
    if row is None or (row["not_before"] is not None and now < row["not_before"]):
        return False
    action = relocation.next_action(_move(row), _facts(row), now)
    if action.kind == "wait":
        await _wait(p, row, action.reason)
        return False
    try:
        await ACTIONS[action.kind](p, row, action)
    except ProviderError as exc:
        await _failed(p, row, action, exc)
        return False
    return True


def _move(row: Row) -> relocation.Move:
    def job(prefix: str) -> relocation.Job | None:
        if row[f"{prefix}_state"] is None:
            return None
        return relocation.Job(
            row[f"{prefix}_state"],
            row[f"{prefix}_attempts"],
            row[f"{prefix}_retry"],
            row[f"{prefix}_error"] or "",
        )

    return relocation.Move(
        row["phase"],
        row["source_server"],
        row["target_server"],
        job("sj"),
        job("rj"),
        recovery=row["source_server"] is None,
    )


def _facts(row: Row) -> relocation.Facts:
    try:
        report = json.loads(row["source_report"] or "{}")
    except ValueError:
        report = {"containers": [{"user_id": row["user_id"]}]}  # unreadable: still in use
    containers = {c.get("user_id") for c in report.get("containers") or []}
    mounted = {v.get("id") for v in report.get("volumes") or [] if v.get("state") != "missing"}
    applied = (row["source_applied"] or 0) >= (row["source_generation"] or 0)
    on_target = row["user_state"] in steps.PLACED and row["user_server"] == row["target_server"]
    return relocation.Facts(
        on_target=on_target,
        running=on_target and row["user_state"] == "running",
        source_alive=row["source_status"] in ALIVE,
        source_stopped=applied and row["user_id"] not in containers,
        source_mounted=row["old_provider_id"] in mounted,
        busy=bool(row["other_jobs"]),
    )


def _old(row: Row) -> ProviderVolume:
    return ProviderVolume(
        row["old_provider_id"],
        row["old_name"],
        row["old_location"],
        row["size_gb"],
        row["old_device"] or "",
    )


def _new(row: Row) -> ProviderVolume:
    return ProviderVolume(
        row["new_provider_id"] or "",
        row["new_name"],
        row["target_location"],
        row["size_gb"],
        row["new_device"] or "",
    )


async def _job(
    conn: aiosqlite.Connection, row: Row, kind: str, action: relocation.Action, now: float
) -> str:
    """A `move` job and its phase, in the caller's transaction."""
    snapshot = kind == "snapshot"
    server = row["source_server"] if snapshot else row["target_server"]
    job_id = await jobs.create(
        conn,
        user_id=row["user_id"],
        kind="snapshot" if snapshot else "restore",
        reason="move",
        server_id=server,
        volume_id=row["old_provider_id"] if snapshot else row["new_provider_id"],
        now=now,
        snapshot_id=None if snapshot else row["snapshot_id"],
        attempts=action.attempts,
    )
    await servers.bump_generation(conn, server)  # its long-poll brings the job
    what = f"{kind} {job_id} (move) on {server}"
    await events.record(conn, "backup_requested", what, user_id=row["user_id"], at=now)
    if snapshot:
        await relocations.advance(conn, row["user_id"], "snapshot", now, snapshot_job=job_id)
    else:
        await relocations.advance(conn, row["user_id"], "restoring", now, restore_job=job_id)
    return str(server)


async def _snapshot(p: Provisioner, row: Row, action: relocation.Action) -> None:
    now = p.clock()
    p.notify(await p.store.write(lambda conn: _job(conn, row, "snapshot", action, now)))


async def _restore(p: Provisioner, row: Row, action: relocation.Action) -> None:
    now = p.clock()
    p.notify(await p.store.write(lambda conn: _job(conn, row, "restore", action, now)))


async def _snapshot_done(p: Provisioner, row: Row, action: relocation.Action) -> None:
    what = f"final snapshot {row['sj_snapshot']} of {row['old_name']} done"
    await _write(p, row, "creating", ("move_snapshot", what), snapshot_id=row["sj_snapshot"])


async def _create(p: Provisioner, row: Row, action: relocation.Action) -> None:
    labels = {**p.labels, "clawfleet-user": row["user_id"]}
    made = await p.provider.create_volume(
        row["new_name"], row["size_gb"], row["target_location"], labels
    )
    why = "the recovery" if row["source_server"] is None else "the move"
    what = f"{row['new_name']} ({row['size_gb']} GB) in {row['target_location']}, for {why}"
    await _write(
        p,
        row,
        "attaching",
        ("volume_created", what),
        new_provider_id=made.provider_id,
        new_device=made.device,
    )


async def _attach(p: Provisioner, row: Row, action: relocation.Action) -> None:
    await p.provider.attach(_new(row), row["target_provider_id"] or "")
    fresh = await p.store.fetch_one(MOVE_SQL, (row["user_id"],))
    assert fresh is not None
    await _restore(p, fresh, action)


async def _swap(p: Provisioner, row: Row, action: relocation.Action) -> None:
    now = p.clock()
    target = row["target_server"]
    new = (row["new_provider_id"], row["new_name"], row["target_location"], row["new_device"])

    async def apply(conn: aiosqlite.Connection) -> None:
        # Only now does the target's set carry the user (control/workers/assignments.py).
        await records.replace(conn, row["user_id"], new, target, now)
        await relocations.advance(conn, row["user_id"], "starting", now)
        await servers.bump_generation(conn, target)
        what = f"snapshot {row['snapshot_id']} restored onto {row['new_name']} on {target}"
        await events.record(conn, "move_restored", what, user_id=row["user_id"], at=now)

    await p.store.write(apply)
    p.notify(target)


async def _release(p: Provisioner, row: Row, action: relocation.Action) -> None:
    await _write(p, row, "releasing")


async def _detach_old(p: Provisioner, row: Row, action: relocation.Action) -> None:
    await p.provider.detach(_old(row))
    how = "forced: the server is dead or gone" if action.forced else "its agent unmounted it"
    await _write(p, row, "deleting", ("volume_detached", f"{row['old_name']} ({how})"))


async def _delete_old(p: Provisioner, row: Row, action: relocation.Action) -> None:
    await p.provider.delete_volume(_old(row))
    where = f"{row['source_server']} -> {row['target_server']} in {row['target_location']}"
    await _finish(p, row, ("user_relocated", f"{where}; the old volume {row['old_name']} deleted"))


async def _abort(p: Provisioner, row: Row, action: relocation.Action) -> None:
    now = p.clock()
    back = row["user_state"] in steps.PLACED and row["user_server"] == row["target_server"]

    async def apply(conn: aiosqlite.Connection) -> None:
        await relocations.advance(conn, row["user_id"], "aborting", now)
        if back:  # placement finds it a server where its volume is
            await users.set_state(conn, row["user_id"], "pending", None, now)
        what = f"{action.reason}: called off; its volume {row['old_name']} stays its own"
        if row["source_server"] is None:
            what = f"{action.reason}: the recovery is called off; ask for it again"
        await events.record(conn, "move_aborted", what, user_id=row["user_id"], at=now)

    await p.store.write(apply)


async def _discard(p: Provisioner, row: Row, action: relocation.Action) -> None:
    if row["new_provider_id"]:
        await p.provider.detach(_new(row))
        await p.provider.delete_volume(_new(row))
    await _finish(p, row, ("volume_deleted", f"{row['new_name']}: the move was called off"))


async def _recovered(p: Provisioner, row: Row, action: relocation.Action) -> None:
    what = (
        f"runs on {row['new_name']} in {row['target_location']}, restored from snapshot "
        f"{row['snapshot_id']}; its lost volume {row['old_name']} is forgotten"
    )
    await _finish(p, row, ("volume_recovered", what))


async def _write(
    p: Provisioner,
    row: Row,
    phase: str,
    event: tuple[str, str] | None = None,
    **values: str | None,
) -> None:
    now = p.clock()

    async def apply(conn: aiosqlite.Connection) -> None:
        await relocations.advance(conn, row["user_id"], phase, now, **values)
        if event is not None:
            await events.record(conn, event[0], event[1], user_id=row["user_id"], at=now)

    await p.store.write(apply)


async def _finish(p: Provisioner, row: Row, event: tuple[str, str]) -> None:
    now = p.clock()

    async def apply(conn: aiosqlite.Connection) -> None:
        await relocations.forget(conn, row["user_id"])
        await events.record(conn, event[0], event[1], user_id=row["user_id"], at=now)

    await p.store.write(apply)


async def _wait(p: Provisioner, row: Row, reason: str) -> None:
    if row["last_error"] == reason:
        return
    now = p.clock()

    async def apply(conn: aiosqlite.Connection) -> None:
        await relocations.waiting(conn, row["user_id"], reason, now)
        if row["phase"] in relocation.PRE_SWAP:  # the volume row is still the old one
            await records.waiting(conn, row["user_id"], reason, now)
        await events.record(conn, "move_waiting", reason, user_id=row["user_id"], at=now)

    await p.store.write(apply)


async def _failed(p: Provisioner, row: Row, action: relocation.Action, exc: ProviderError) -> None:
    now = p.clock()
    failure = steps.on_failure(exc.kind, exc.code, row["failures"] + 1, exc.retry_after)
    message = f"moving: {action.kind} failed: {failure.message}"

    async def apply(conn: aiosqlite.Connection) -> None:
        await relocations.failed(conn, row["user_id"], message, now + failure.delay, now)
        if row["phase"] in relocation.PRE_SWAP:
            await records.waiting(conn, row["user_id"], message, now)
        detail = f"{message} ({exc}); next try in {failure.delay:.0f} s"
        await events.record(conn, "move_failed", detail, user_id=row["user_id"], at=now)

    await p.store.write(apply)


ACTIONS: dict[str, Callable[[Provisioner, Row, relocation.Action], Awaitable[None]]] = {
    "snapshot": _snapshot,
    "snapshot_done": _snapshot_done,
    "create": _create,
    "attach": _attach,
    "restore": _restore,
    "swap": _swap,
    "release": _release,
    "detach_old": _detach_old,
    "delete_old": _delete_old,
    "abort": _abort,
    "discard": _discard,
    "recovered": _recovered,
}
