"""The backup variables (docs/backups.md), declared like every other setting.

Contract: `BackupSettings` is a frozen, keyword-only dataclass that `Settings` inherits,
so its variables are read, documented and checked like the rest (their rows come first
in docs/configuration.md: a base class's fields precede the subclass's). It lives here
because the settings module has no room left under the 400-line rule. An empty
BACKUP_S3_ENDPOINT turns backups off; with an endpoint, `check_backups` requires the
bucket and both keys. The S3 keys are secrets: never in repr, errors or the docs' values.
"""

from __future__ import annotations

from dataclasses import dataclass

from control.backups.repository import BUCKET
from control.backups.retention import Retention, RetentionError, parse_retention
from control.settings.rules import SettingsError
from shared.config import Invalid, matching, optional, setting, text, url

_BUCKET_RULE = r"3-63 characters a-z 0-9 . -"


def _retention(value: str) -> Retention:
    try:
        return parse_retention(value)
    except RetentionError as exc:
        raise Invalid(exc.message) from None


def _bucket_ok(value: str) -> bool:
    return bool(BUCKET.fullmatch(value))


@dataclass(frozen=True, kw_only=True)
class BackupSettings:
    backup_s3_endpoint: str = setting(
        "BACKUP_S3_ENDPOINT",
        "",
        optional(url),
        "S3-compatible endpoint of users' backups, e.g. https://fsn1.your-objectstorage.com (Hetzner Object Storage); empty: backups off (docs/backups.md).",
    )
    backup_s3_bucket: str = setting(
        "BACKUP_S3_BUCKET",
        "",
        optional(matching(_bucket_ok, f"an S3 bucket name ({_BUCKET_RULE})")),
        "Bucket of the backups; each user's restic repository is <bucket>/CLUSTER_NAME/<user id>.",
    )
    backup_s3_access_key: str = setting(
        "BACKUP_S3_ACCESS_KEY", "", text, "S3 access key of the backup bucket.", secret=True
    )
    backup_s3_secret_key: str = setting(
        "BACKUP_S3_SECRET_KEY", "", text, "S3 secret key of the backup bucket.", secret=True
    )
    backup_retention: Retention = setting(
        "BACKUP_RETENTION",
        "hourly=24,daily=7,weekly=4",
        _retention,
        "Snapshots each user's repository keeps: name=count pairs of hourly, daily and weekly (a name left out keeps 0 of that kind; at least one above 0); restic prunes the rest.",
    )

    @property
    def backups_enabled(self) -> bool:
        return bool(self.backup_s3_endpoint)

    def check_backups(self) -> None:
        """With an endpoint, everything else backups need must be set too."""
        if not self.backups_enabled:
            return
        for name, value in (
            ("BACKUP_S3_BUCKET", self.backup_s3_bucket),
            ("BACKUP_S3_ACCESS_KEY", self.backup_s3_access_key),
            ("BACKUP_S3_SECRET_KEY", self.backup_s3_secret_key),
        ):
            if not value:
                raise SettingsError(f"{name}: required when BACKUP_S3_ENDPOINT is set")
