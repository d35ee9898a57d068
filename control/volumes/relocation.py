"""What a move to another location does next: pure functions tested with parameter tables.

A volume cannot be attached across locations, so such a move (issue 13) copies the
user's state through a backup and a restore. `next_action(move, facts, now)` decides
one action from a snapshot of the move (control/volumes/relocations.py) and of what
the fleet reports; each phase is recorded before the action it stands for, so a crash
resumes at the same action (every action is idempotent or creates a job whose id is
stored in the same transaction):

- `stopping`: the user is already placed on the target, so no server runs it; once the
  source's agent applied that and reports no container of the user, and no other job
  of the user is open (one job of a user at a time): `snapshot`.
- `snapshot`: a final snapshot (reason `move`) of the old volume, on the source, with
  the container stopped. Done: `creating`; failed: asked again after its back-off.
- `creating`: a new volume in the target's location (idempotent by its stored name).
- `attaching`: it is attached to the target; then a `restore` of exactly that
  snapshot onto it (the agent mounts it blank for the job). The user's spec is withheld
  meanwhile: its volume row still names the old volume, attached elsewhere.
- `restoring`: done: `swap` (the volume row becomes the new volume, attached to the
  target: only now does the target get the spec); failed: asked again after back-off.
- `starting`: once the user runs on the target (or left it: the new volume is its
  state now): `release`.
- `releasing`, `deleting`: the old volume is detached (once the source unmounted it,
  at once when the source is dead or gone) and deleted; then the move is forgotten.

A recovery (control/volumes/recover.py: the operator's way out when the user's volume is
lost at the provider) is a move with no source (`recovery`): it is recorded at
`creating`, in the lost volume's location, with the snapshot the operator chose, and goes
through the same `creating`, `attaching`, `restoring` and `starting`; once the user runs
on the new volume (or left the target) it is over (`recovered`): there is no old volume
to detach or delete. Called off before the swap, the user waits for its lost volume again.

Before the swap, the old volume is the user's only state. A move whose user left the
target (cancelled, the target died) or whose source died before the snapshot is called
off (`abort`): the new volume, if any, is detached and deleted, and the user goes back
to placement with its old volume. Nothing here ever starts the user on empty state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Phase = Literal[
    "stopping",
    "snapshot",
    "creating",
    "attaching",
    "restoring",
    "starting",
    "releasing",
    "deleting",
    "aborting",
]
PRE_SWAP: tuple[Phase, ...] = ("stopping", "snapshot", "creating", "attaching", "restoring")
PHASES: tuple[Phase, ...] = (*PRE_SWAP, "starting", "releasing", "deleting", "aborting")
ActionKind = Literal[
    "wait",
    "snapshot",
    "snapshot_done",
    "create",
    "attach",
    "restore",
    "swap",
    "release",
    "detach_old",
    "delete_old",
    "abort",
    "discard",
    "recovered",
]
OPEN = ("pending", "running")


@dataclass(frozen=True)
class Job:
    """The move's latest job of one kind, as its row says."""

    state: str  # pending, running, done, failed
    attempts: int = 1
    retry_after: float | None = None
    error: str = ""


@dataclass(frozen=True)
class Move:
    phase: Phase
    source: str | None
    target: str
    snapshot: Job | None = None
    restore: Job | None = None
    recovery: bool = False  # the old volume is lost: restored from a snapshot (no source)


@dataclass(frozen=True)
class Facts:
    on_target: bool  # the user is placed (provisioning or running) on the target
    running: bool  # ... and its container there reported healthy (state running)
    source_alive: bool  # the source is not dead, deleting nor deleted
    source_stopped: bool  # its agent applied its latest set and runs no container of the user
    source_mounted: bool  # its agent still reports the old volume mounted
    busy: bool = False  # another job of the user (a scheduled snapshot) is still open


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    reason: str = ""  # wait, abort: what the user is told
    attempts: int = 1  # snapshot, restore: the job's attempt number
    forced: bool = False  # detach_old: the source is gone, nothing waits for it


def next_action(move: Move, facts: Facts, now: float) -> Action:
    if move.phase in PRE_SWAP and not facts.on_target:
        return Action("abort", reason=f"the user left {move.target} before its state was there")
    if move.phase in ("stopping", "snapshot") and not facts.source_alive:
        return Action("abort", reason=f"{move.source} is dead or gone before the final snapshot")
    if move.phase == "stopping":
        if facts.busy:  # one job of a user at a time (control/volumes/backups.py)
            return Action("wait", reason="moving: waiting for an open backup job to finish")
        if facts.source_stopped:
            return Action("snapshot")
        return Action("wait", reason=f"moving: waiting for the container on {move.source} to stop")
    if move.phase == "snapshot":
        return _job(move.snapshot, "snapshot", f"the final snapshot on {move.source}", now)
    if move.phase in ("creating", "attaching"):
        return Action("create" if move.phase == "creating" else "attach")
    if move.phase == "restoring":
        return _job(move.restore, "restore", f"the restore on {move.target}", now)
    if move.phase == "starting":
        if facts.running or not facts.on_target:
            return Action("recovered" if move.recovery else "release")
        return Action("wait", reason=f"moving: waiting for the container on {move.target}")
    if move.phase == "releasing":
        if facts.source_alive and facts.source_mounted:
            return Action("wait", reason=f"moved: waiting for {move.source} to unmount the old one")
        return Action("detach_old", forced=not facts.source_alive)
    if move.phase == "deleting":
        return Action("delete_old")
    return Action("discard")  # aborting


def _job(job: Job | None, kind: Literal["snapshot", "restore"], what: str, now: float) -> Action:
    """A phase that waits on its job: done moves on; failed asks again after its back-off."""
    if job is None:  # never left so (the job is created with the phase), but safe to repeat
        return Action(kind)
    if job.state in OPEN:
        return Action("wait", reason=f"moving: {what} is {job.state}")
    if job.state == "done":
        return Action("snapshot_done" if kind == "snapshot" else "swap")
    if job.retry_after is not None and now < job.retry_after:
        return Action("wait", reason=f"moving: {what} failed ({job.error}); retrying")
    return Action(kind, attempts=job.attempts + 1)
