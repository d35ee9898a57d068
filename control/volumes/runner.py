"""Applies each user's next volume step (control/volumes/steps.py) through the provider.

Contract:
- `run(p)` is one of the autoscaler's steps (control/capacity/scaler.py), so it runs off
  the request path, never overlaps itself, and a failure is logged by the scaler.
  It does nothing unless USER_VOLUMES is on.
- Each step is recorded before its provider call (control/volumes/records.py) and a
  user's steps follow one another in the same run while they succeed (create, then
  attach), at most MAX_STEPS.
- A failed call leaves the user waiting: `last_error` on the volume, a `volume_failed`
  event, and no call for that volume before its back-off (`steps.on_failure`) has passed.
  A wait (a container still running on the old server, a location that differs) is
  `last_error` and one `volume_waiting` event per new reason.
- An attach bumps the generation of the server it attached to, whose desired set now
  carries the volume (a resize, for a plan that asks for more `disk_gb`, bumps nothing:
  the spec carries the plan's size from the plan change on); an old server still
  running a moved user's container after applying its latest set is bumped once more,
  so it re-reads a set without it.
- A user moving to another location is left to control/volumes/relocate.py (run at
  the end of each run) until its state is restored onto the new volume: its volume row
  still names the old one, which that move snapshots, keeps, and deletes at its end.
- A detach that is not forced waits while a final snapshot of the volume is open on
  the server it leaves: a drain's (`final-drain`, asked in the move's transaction,
  control/volumes/backups.py) or a cancelled user's (`final-retention`, asked when it
  was cancelled, or by control/volumes/final_attach.py, which attached the volume
  there for that job only): the volume leaves only once that job reports done or
  failed (or times out), whatever the agent's mounts say meanwhile.
- A volume is deleted (retention over) only once `final_backup_before_delete` says so:
  with backups on, after its final snapshot (control/volumes/backups.py); until then
  it waits, kept, with that reason on the user's volume (or the more precise one
  final_attach.py gave, which begins the same and is left as it is).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import aiosqlite

from control.capacity.providers.base import ProviderError, ProviderVolume
from control.capacity.providers.hetzner_volumes import volume_name
from control.capacity.provisioning import Provisioner
from control.db import events
from control.db.store import Row
from control.users.plans import plan_of
from control.volumes import backups, final_attach, records, relocate, relocation, steps
from control.workers import servers

log = logging.getLogger(__name__)
MAX_STEPS = 4
ALIVE = ("provisioning", "active", "unhealthy")
NO_FINAL_SNAPSHOT = final_attach.KEPT


async def final_backup_before_delete(p: Provisioner, user_id: str) -> bool:
    """Whether the volume may be deleted now: with backups on, only once its final
    snapshot is done (control/volumes/backups.py `may_delete`)."""
    return await backups.may_delete(p, user_id)


@dataclass(frozen=True)
class _User:
    id: str
    state: str | None
    plan: str
    server_id: str | None
    location: str | None
    provider_id: str | None


async def run(p: Provisioner) -> None:
    if not p.settings.user_volumes:
        return
    users = {
        r["id"]: _User(
            r["id"], r["state"], r["plan"], r["server_id"], r["location"], r["provider_id"]
        )
        for r in await p.store.fetch_all(
            "SELECT u.id, u.state, u.plan, u.server_id, s.location, s.provider_id "
            "FROM users u LEFT JOIN servers s ON s.id = u.server_id"
        )
    }
    with_volume = {r["user_id"] for r in await p.store.fetch_all("SELECT user_id FROM volumes")}
    placed = {u for u, row in users.items() if row.state in steps.PLACED and row.server_id}
    marks = ", ".join("?" for _ in relocation.PRE_SWAP)
    moving = {
        r["user_id"]
        for r in await p.store.fetch_all(
            f"SELECT user_id FROM relocations WHERE phase IN ({marks})", relocation.PRE_SWAP
        )
    }
    for user_id in sorted((placed | with_volume) - moving):
        user = users.get(user_id) or _User(user_id, None, "default", None, None, None)
        for _ in range(MAX_STEPS):
            if not await _advance(p, user):
                break
    await relocate.run(p)


async def _advance(p: Provisioner, user: _User) -> bool:
    """One step for one user; True when it succeeded and another may follow."""
    row = await p.store.fetch_one(
        "SELECT v.*, s.status AS holder_status, s.report AS holder_report, "
        "s.provider_id AS holder_provider_id, s.generation, s.applied_generation "
        "FROM volumes v LEFT JOIN servers s ON s.id = v.server_id WHERE v.user_id = ?",
        (user.id,),
    )
    now = p.clock()
    if row is not None and row["not_before"] is not None and now < row["not_before"]:
        return False
    placement = steps.Placement(
        user.state,
        user.server_id,
        user.location,
        server_ready=user.provider_id is not None,
        size_gb=plan_of(p.settings.plans, user.plan).volume_gb,
    )
    step = steps.next_step(_view(row), placement, _holder(row))
    if step.kind == "none" and row is not None and row["state"] == "attached":
        problem = _agent_problem(row)
        if problem:  # the agent holds the container back: say why on the user
            await _wait(p, user.id, row, steps.Step("wait", reason=problem))
        elif row["last_error"]:  # mounted again: the wait is over
            await p.store.write(lambda conn: records.waiting(conn, user.id, None, now))
    if step.kind == "none":
        return False
    if step.kind == "wait":
        await _wait(p, user.id, row, step)
        return False
    if step.kind == "detach" and not step.forced and (job := await _open_job(p, row)):
        await _wait(p, user.id, row, steps.Step("wait", reason=job))
        return False
    if step.kind == "delete" and not await final_backup_before_delete(p, user.id):
        if not (row and (row["last_error"] or "").startswith(NO_FINAL_SNAPSHOT)):
            await _wait(p, user.id, row, steps.Step("wait", reason=NO_FINAL_SNAPSHOT))
        return False
    try:
        await _apply(p, user, row, step)
    except ProviderError as exc:
        await _failed(p, user.id, step, exc)
        return False
    return True


async def _open_job(p: Provisioner, row: Row | None) -> str:
    """Why the volume stays: its final snapshot still open on its holder, else ""."""
    if row is None or row["server_id"] is None:
        return ""
    job = await p.store.fetch_one(
        "SELECT id, reason FROM backup_jobs WHERE user_id = ? AND server_id = ? "
        "AND volume_id = ? AND reason IN ('final-drain', 'final-retention') "
        "AND state IN ('pending', 'running') "
        "ORDER BY created_at LIMIT 1",
        (row["user_id"], row["server_id"], row["provider_id"]),
    )
    if job is None:
        return ""
    what = f"{job['id']} ({job['reason']}) on {row['server_id']}"
    return f"waiting for backup job {what} to end: the volume's final snapshot"


def _view(row: Row | None) -> steps.Volume | None:
    if row is None:
        return None
    return steps.Volume(row["state"], row["location"], row["server_id"], row["size_gb"])


def _holder(row: Row | None) -> steps.Holder | None:
    if row is None or row["server_id"] is None or row["holder_status"] is None:
        return None
    return steps.Holder(row["holder_status"] in ALIVE, _using(row))


def _using(row: Row) -> bool:
    """Whether the holder's last heartbeat still shows the user's container or the
    volume mounted (an unreadable report counts as in use: never detach blindly)."""
    try:
        report = json.loads(row["holder_report"] or "{}")
    except ValueError:
        return True
    containers = {c.get("user_id") for c in report.get("containers") or []}
    mounted = {v.get("id") for v in report.get("volumes") or [] if v.get("state") != "missing"}
    return row["user_id"] in containers or row["provider_id"] in mounted


def _agent_problem(row: Row) -> str:
    """What the holder's agent last said about the volume, when it is not mounted, or
    mounted with an error (a file system it could not grow)."""
    try:
        report = json.loads(row["holder_report"] or "{}")
    except ValueError:
        return ""
    for volume in report.get("volumes") or []:
        if volume.get("id") != row["provider_id"]:
            continue
        detail = f": {volume['error']}" if volume.get("error") else ""
        if volume.get("state") != "mounted" or detail:  # mounted but not grown, say
            return f"the agent on {row['server_id']} reports it {volume.get('state')}{detail}"
    return ""


def _provider_volume(row: Row) -> ProviderVolume:
    return ProviderVolume(
        row["provider_id"], row["name"], row["location"], row["size_gb"], row["device"] or ""
    )


async def _apply(p: Provisioner, user: _User, row: Row | None, step: steps.Step) -> None:
    if step.kind == "create":
        await _create(p, user, step.location or "")
        return
    assert row is not None
    volume = _provider_volume(row)
    if step.kind == "attach":
        target = step.server_id or ""
        await _record(p, user.id, "attaching", target)
        await p.provider.attach(volume, user.provider_id or "")
        await _record(p, user.id, "attached", target, ("volume_attached", f"attached to {target}"))
        p.notify(target)
    elif step.kind == "detach":
        source = step.server_id
        await _record(p, user.id, "detaching", source)
        await p.provider.detach(volume)
        how = "forced: " + step.reason if step.forced else "its container stopped"
        await _record(p, user.id, "detached", None, ("volume_detached", f"from {source} ({how})"))
    elif step.kind == "resize":
        await _resize(p, user.id, row, step)
    elif step.kind == "delete":
        await _record(p, user.id, "deleting", None)
        await p.provider.delete_volume(volume)
        await p.store.write(lambda conn: _forget(conn, user.id, p.clock()))


async def _create(p: Provisioner, user: _User, location: str) -> None:
    name = volume_name(p.settings.cluster_name, user.id)
    size = plan_of(p.settings.plans, user.plan).volume_gb
    now = p.clock()
    await p.store.write(
        lambda conn: records.begin_create(conn, user.id, name, p.provider.name, location, size, now)
    )
    labels = {**p.labels, "clawfleet-user": user.id}
    made = await p.provider.create_volume(name, size, location, labels)

    async def apply(conn: aiosqlite.Connection) -> None:
        await records.created(conn, user.id, made.provider_id, made.device, now)
        message = f"{name} ({size} GB) in {made.location or location}"
        await events.record(conn, "volume_created", message, user_id=user.id, at=now)

    await p.store.write(apply)


async def _resize(p: Provisioner, user_id: str, row: Row, step: steps.Step) -> None:
    """Grows the volume and says so. Nothing is recorded before the call: a retry after a
    lost reply is told by the provider that the volume is that size already. The
    holder's spec has carried the new size since the plan changed
    (control/workers/assignments.py): its agent grows the file system once the device
    has grown, so nothing here wakes it."""
    size, at, now = step.size_gb or 0, step.server_id or "", p.clock()
    await p.provider.resize_volume(_provider_volume(row), size)

    async def apply(conn: aiosqlite.Connection) -> None:
        await records.resized(conn, user_id, size, now)
        message = f"{row['name']} grown from {row['size_gb']} to {size} GB (its plan's disk)"
        await events.record(conn, "volume_resized", message, server_id=at, user_id=user_id, at=now)

    await p.store.write(apply)


async def _record(
    p: Provisioner,
    user_id: str,
    state: str,
    server_id: str | None,
    event: tuple[str, str] | None = None,
) -> None:
    now = p.clock()

    async def apply(conn: aiosqlite.Connection) -> None:
        await records.set_state(conn, user_id, state, server_id, now)
        if event is not None:
            kind, message = event
            await events.record(conn, kind, message, server_id=server_id, user_id=user_id, at=now)
        if state == "attached" and server_id is not None:
            # Its desired set now carries the volume (control/workers/assignments.py).
            await servers.bump_generation(conn, server_id)

    await p.store.write(apply)


async def _forget(conn: aiosqlite.Connection, user_id: str, now: float) -> None:
    await records.forget(conn, user_id)
    await events.record(conn, "volume_deleted", "retention is over", user_id=user_id, at=now)


async def _wait(p: Provisioner, user_id: str, row: Row | None, step: steps.Step) -> None:
    now = p.clock()
    stale = (
        row is not None
        and step.server_id is not None
        and (row["applied_generation"] or 0) >= row["generation"]
    )

    async def apply(conn: aiosqlite.Connection) -> None:
        if stale and step.server_id is not None:
            # It applied a set read before the user left it: make it read again.
            await servers.bump_generation(conn, step.server_id)
        if row is not None and row["last_error"] != step.reason:
            await records.waiting(conn, user_id, step.reason, now)
            await events.record(conn, "volume_waiting", step.reason, user_id=user_id, at=now)

    await p.store.write(apply)
    if stale and step.server_id is not None:
        p.notify(step.server_id)


async def _failed(p: Provisioner, user_id: str, step: steps.Step, exc: ProviderError) -> None:
    now = p.clock()
    row = await p.store.fetch_one("SELECT failures FROM volumes WHERE user_id = ?", (user_id,))
    failures = (row["failures"] if row else 0) + 1
    failure = steps.on_failure(exc.kind, exc.code, failures, exc.retry_after)
    message = f"{step.kind} failed: {failure.message}"
    log.warning("volume of %s: %s: %s [%s]", user_id, step.kind, exc, exc.kind)

    async def apply(conn: aiosqlite.Connection) -> None:
        await records.failed(conn, user_id, message, now + failure.delay, now)
        detail = f"{message} ({exc}); next try in {failure.delay:.0f} s"
        await events.record(
            conn, "volume_failed", detail, server_id=step.server_id, user_id=user_id, at=now
        )

    await p.store.write(apply)
