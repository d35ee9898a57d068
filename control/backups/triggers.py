"""When a final snapshot is owed: before the data a user's state lives on may go away.

Contract: `final_snapshot_reason(user, now, lead_seconds)` is a pure function of one
user's state and returns the first reason that applies, or None:
- `operator`: an operator asked for a snapshot and none finished since they asked;
- `drain`: the server holding the user's state is draining (a drain deletes the server)
  and no snapshot finished since the drain began;
- `retention_ending`: the user is deprovisioned (cancelled), their retention ends
  (`purge_after`) within `lead_seconds`, and no snapshot finished since that window
  opened. The state no longer changes then, so that snapshot is the final one.
`final_cleared(asked, done, waived)` says when the purge (which deletes the volume) may
go on with backups on: once a snapshot finished, or an operator waived it, after the
LATEST final snapshot was asked for. `final_owed(asked, done, waived, cancelled_at)`
says whether a cancelled (or purged) user's volume still owes that snapshot: none
finished and none waived since the later of that ask and the cancellation (a user
cancelled again while its volume was detached was never asked: its cancellation is
what a snapshot must follow); what control/volumes/final_attach.py takes for a
volume no live server holds.
A snapshot "finished since" T means `last_snapshot_at >= T`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class FinalReason(StrEnum):
    OPERATOR = "operator"
    DRAIN = "drain"
    RETENTION_ENDING = "retention_ending"


@dataclass(frozen=True)
class UserBackupState:
    user_id: str
    state: str  # pending, provisioning, running, suspended, deprovisioned
    last_snapshot_at: float | None = None
    operator_requested_at: float | None = None
    server_draining_since: float | None = None  # of the server holding the user's state
    purge_after: float | None = None  # deprovisioned users: when their retention ends


def _since(user: UserBackupState, moment: float) -> bool:
    return user.last_snapshot_at is not None and user.last_snapshot_at >= moment


def final_snapshot_reason(
    user: UserBackupState, now: float, lead_seconds: float
) -> FinalReason | None:
    if user.operator_requested_at is not None and not _since(user, user.operator_requested_at):
        return FinalReason.OPERATOR
    # Whatever the user's state: a cancelled user's retained data dies with the server too.
    if user.server_draining_since is not None and not _since(user, user.server_draining_since):
        return FinalReason.DRAIN
    if user.state == "deprovisioned" and user.purge_after is not None:
        window = user.purge_after - lead_seconds
        if now >= window and not _since(user, window):
            return FinalReason.RETENTION_ENDING
    return None


def final_cleared(asked: float | None, done: float | None, waived: float | None) -> bool:
    """Whether a purged user's volume may be deleted, from the LATEST final snapshot asked
    for (a user cancelled, resumed and cancelled again has changed state since the first),
    the latest snapshot done and the latest operator's waiver: a snapshot done, or a
    waiver given, since that ask. Nothing asked and nothing waived: not yet."""
    if waived is not None and (asked is None or waived >= asked):
        return True
    return asked is not None and done is not None and done >= asked


def final_owed(
    asked: float | None, done: float | None, waived: float | None, cancelled_at: float | None
) -> bool:
    """Whether the volume of a cancelled user (`cancelled_at`: when; None once purged,
    when it is no longer known) still needs its final snapshot: `final_cleared` since
    the later of the latest final snapshot asked for and the cancellation."""
    since = max((t for t in (asked, cancelled_at) if t is not None), default=None)
    return not final_cleared(since, done, waived)
