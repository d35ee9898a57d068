"""Where a user's restic repository lives: one per user, `<bucket>/<cluster>/<user id>`.

Contract: `repository_url(endpoint, bucket, cluster, user_id)` is restic's S3 form,
`s3:<endpoint>/<bucket>/<cluster>/<user id>`, for an http(s) endpoint without
credentials or a path, a bucket name by S3's rules, a cluster label and a user id made
only of characters that need no escaping in a key; anything else raises
`RepositoryError`. The repository's password is `Keyring.backup_password(user_id)`.
The cluster in the path keeps two control planes sharing a bucket apart.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from control.errors import ClawfleetError

BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class RepositoryError(ClawfleetError):
    """A repository location could not be built from these values."""

    code = "backup_repository_invalid"


def repository_url(endpoint: str, bucket: str, cluster: str, user_id: str) -> str:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username:
        raise RepositoryError("backup endpoint must be an http(s) URL without credentials")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise RepositoryError("backup endpoint must not carry a path: the bucket is separate")
    if not BUCKET.fullmatch(bucket):
        raise RepositoryError(f"not an S3 bucket name: {bucket[:70]!r}")
    for what, value in (("cluster", cluster), ("user id", user_id)):
        if not _SEGMENT.fullmatch(value):
            raise RepositoryError(f"{what} cannot be a repository path segment: {value[:70]!r}")
    return f"s3:{endpoint.rstrip('/')}/{bucket}/{cluster}/{user_id}"
