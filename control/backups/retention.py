"""BACKUP_RETENTION: how many hourly, daily and weekly snapshots each repository keeps.

Contract: `parse_retention(text)` accepts exactly `name=count` pairs separated by commas,
names from hourly/daily/weekly, each at most once, counts whole numbers 0..10000, at
least one count above 0 (a policy that keeps nothing would let restic forget every
snapshot); a name left out keeps 0 of that kind. Anything else raises `RetentionError`
saying what was expected. restic applies the counts (`forget --keep-hourly ...`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from control.errors import ConfigurationError

_PAIR = re.compile(r"(hourly|daily|weekly)=([0-9]{1,5})")
MAX_COUNT = 10_000


class RetentionError(ConfigurationError):
    """BACKUP_RETENTION is malformed; the message says what was expected."""


@dataclass(frozen=True)
class Retention:
    hourly: int = 0
    daily: int = 0
    weekly: int = 0

    def __str__(self) -> str:
        return f"hourly={self.hourly},daily={self.daily},weekly={self.weekly}"


DEFAULT_RETENTION = Retention(hourly=24, daily=7, weekly=4)


def parse_retention(text: str) -> Retention:
    counts: dict[str, int] = {}
    for part in text.split(","):
        match = _PAIR.fullmatch(part.strip())
        if match is None:
            raise RetentionError(
                f"expected name=count pairs (hourly, daily, weekly) like {DEFAULT_RETENTION}, "
                f"got {part.strip()[:40]!r}"
            )
        name, count = match.group(1), int(match.group(2))
        if name in counts:
            raise RetentionError(f"{name} given twice")
        if count > MAX_COUNT:
            raise RetentionError(f"{name} must be at most {MAX_COUNT}")
        counts[name] = count
    if not any(counts.values()):
        raise RetentionError("keeps no snapshot at all: at least one count must be above 0")
    return Retention(**counts)
