"""The `BackupJob` a worker receives for a job row (docs/backups.md, "Keys").

Contract: `backup_job(row, settings, keyring)` is pure given its inputs. It carries the
user's repository URL (control/backups/repository.py), the repository password derived
for that user (`Keyring.backup_password`), the bucket's S3 keys and, for a snapshot,
BACKUP_RETENTION's counts (capped at the protocol's 1000; a restore prunes nothing).
Its tags name the job and why it ran, so `restic snapshots` tells a final snapshot from
a scheduled one. It describes the volume as a spec would (`volume`, from the row's
`volume_device` and `volume_size_gb`, the volume's columns the desired set joins), so the
agent can mount it when no spec names it; left out when the volume has no device the
protocol accepts (the agent then works only on a volume mounted already). The message
is built at each read of the desired set and never stored.
"""

from __future__ import annotations

import re

from control.backups.repository import repository_url
from control.db.store import Row
from control.keyring import Keyring
from control.settings import Settings
from shared.protocol import BLOCK_DEVICE_PATTERN, BackupJob, BlockVolumeSpec

MAX_KEEP = 1000  # the protocol's bound on each keep_* count
MAX_SIZE_GB = 10240  # the protocol's bound on a block volume's size
_DEVICE = re.compile(BLOCK_DEVICE_PATTERN)


def volume_of(volume_id: str, device: str | None, size_gb: int | None) -> BlockVolumeSpec | None:
    """The job's volume as a spec carries it, or None when the agent would refuse it."""
    if not device or not _DEVICE.search(device) or not size_gb or not 1 <= size_gb <= MAX_SIZE_GB:
        return None
    return BlockVolumeSpec(id=volume_id, device=device, size_gb=size_gb)


def backup_job(row: Row, settings: Settings, keyring: Keyring) -> BackupJob:
    user_id = row["user_id"]
    keep = settings.backup_retention
    snapshot = row["kind"] == "snapshot"
    return BackupJob(
        id=row["id"],
        user_id=user_id,
        kind=row["kind"],
        volume_id=row["volume_id"],
        repository=repository_url(
            settings.backup_s3_endpoint, settings.backup_s3_bucket, settings.cluster_name, user_id
        ),
        password=keyring.backup_password(user_id),
        access_key=settings.backup_s3_access_key,
        secret_key=settings.backup_s3_secret_key,
        snapshot_id=row["snapshot_id"] or "",
        tags=["clawfleet", f"reason:{row['reason']}", f"job:{row['id']}"],
        keep_hourly=min(keep.hourly, MAX_KEEP) if snapshot else 0,
        keep_daily=min(keep.daily, MAX_KEEP) if snapshot else 0,
        keep_weekly=min(keep.weekly, MAX_KEEP) if snapshot else 0,
        volume=volume_of(row["volume_id"], row["volume_device"], row["volume_size_gb"]),
    )
