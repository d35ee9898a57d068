"""Backups of users' state (docs/backups.md): the control plane's decisions about them.

Owns: what a backup needs decided centrally, as pure functions of values the caller
reads: BACKUP_RETENTION's format and the retention counts (`retention`), which running
users are due for a scheduled snapshot and how many of them one run asks for
(`schedule`), when a final snapshot is owed
(`triggers`), and where each user's restic repository is (`repository`). The per-user
repository password is `control.keyring.Keyring.backup_password`. Running restic is the
agent's (agent/backups.py); reading the store and sending work to workers is the
callers' (the scheduler and the workers' reconcile), so nothing here touches a table.
May import: control.errors and control.plans (a foundation package: the settings parse
BACKUP_RETENTION with it), and shared/.
"""

from __future__ import annotations

from control.backups.repository import repository_url
from control.backups.retention import DEFAULT_RETENTION, Retention, RetentionError, parse_retention
from control.backups.schedule import (
    Candidate,
    due_for_snapshot,
    runs_left,
    snapshot_budget,
    steady_rate,
)
from control.backups.triggers import (
    FinalReason,
    UserBackupState,
    final_cleared,
    final_owed,
    final_snapshot_reason,
)

__all__ = [
    "DEFAULT_RETENTION",
    "Candidate",
    "FinalReason",
    "Retention",
    "RetentionError",
    "UserBackupState",
    "due_for_snapshot",
    "final_cleared",
    "final_owed",
    "final_snapshot_reason",
    "parse_retention",
    "repository_url",
    "runs_left",
    "snapshot_budget",
    "steady_rate",
]
