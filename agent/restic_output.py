"""What restic prints, decoded (agent/backups.py).

Contract: JSON output is decoded with msgspec into bounded structs; `read_summary` is
the summary line of `restic backup --json` (BackupError when there is none), and
`first_json` the first line holding a JSON document (prune's report follows forget's
JSON in restic 0.14).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

import msgspec

from agent.backup_errors import BackupError


class Summary(msgspec.Struct, frozen=True):
    """restic's backup summary: what one snapshot added."""

    snapshot_id: Annotated[str, msgspec.Meta(max_length=64)]
    data_added: Annotated[int, msgspec.Meta(ge=0)]
    files_new: Annotated[int, msgspec.Meta(ge=0)]
    files_changed: Annotated[int, msgspec.Meta(ge=0)]
    files_unmodified: Annotated[int, msgspec.Meta(ge=0)]
    total_bytes_processed: Annotated[int, msgspec.Meta(ge=0)]
    total_duration: Annotated[float, msgspec.Meta(ge=0)]


class Snapshot(msgspec.Struct, frozen=True):
    id: Annotated[str, msgspec.Meta(max_length=64)]
    time: datetime
    tags: (
        Annotated[list[Annotated[str, msgspec.Meta(max_length=256)]], msgspec.Meta(max_length=64)]
        | None
    ) = None


class _SummaryLine(msgspec.Struct):
    message_type: Annotated[str, msgspec.Meta(max_length=32)]


class _ForgetGroup(msgspec.Struct):
    keep: Annotated[list[Snapshot], msgspec.Meta(max_length=100_000)] | None = None
    remove: Annotated[list[Snapshot], msgspec.Meta(max_length=100_000)] | None = None


SNAPSHOTS = msgspec.json.Decoder(Annotated[list[Snapshot], msgspec.Meta(max_length=100_000)])
FORGET = msgspec.json.Decoder(Annotated[list[_ForgetGroup], msgspec.Meta(max_length=1000)])


@dataclass(frozen=True)
class Pruned:
    kept: tuple[str, ...]
    removed: tuple[str, ...]


def read_summary(out: bytes) -> Summary:
    for line in reversed(out.splitlines()):
        try:
            if msgspec.json.decode(line, type=_SummaryLine).message_type == "summary":
                return msgspec.json.decode(line, type=Summary)
        except (msgspec.ValidationError, msgspec.DecodeError):
            continue
    raise BackupError("restic backup printed no summary")


def first_json(out: bytes) -> bytes:
    """The first line of `out` that holds a JSON document (the rest is prune's report)."""
    for line in out.splitlines():
        if line.lstrip().startswith((b"[", b"{")):
            return line
    return b"[]"
