"""The errors of a restic call (agent/backups.py): each message is restic's own words,
scrubbed of every secret and escaped before it is raised."""

from __future__ import annotations

from agent.errors import AgentError


class BackupError(AgentError):
    """restic failed; the message is restic's own words, scrubbed of every secret."""

    code = "backup_failed"


class WrongPassword(BackupError):
    """The repository exists but this password opens none of its keys."""

    code = "backup_wrong_password"


class RepositoryMissing(BackupError):
    """No repository at the URL (init_if_missing creates one)."""

    code = "backup_repository_missing"


class RestoreRefused(BackupError):
    """The restore target holds data and the caller did not ask to replace it."""

    code = "restore_target_not_empty"
