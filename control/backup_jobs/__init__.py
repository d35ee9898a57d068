"""Backup jobs (issue 13): the snapshots and restores the control plane asks of the
worker holding a user's volume, and what the workers report of them.

Owns: the `backup_jobs` table (records.py is its only writer; a done snapshot job is a
snapshot the user can be restored to), the pure decisions about a job's reports, its
silence and its retries (decide.py), and the `BackupJob` message a worker receives
(messages.py). Creating jobs where a volume is mounted is control/volumes/backups.py's
(it needs the servers' generations); delivering them is the desired set's
(control/workers/assignments.py) and recording reports the heartbeat writer's.
May import: the foundation modules (control.backups for the repository's URL,
control.keyring for its password) and control.db, never another domain package.
"""
