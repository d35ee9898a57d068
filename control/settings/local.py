"""The local provider's variables beyond its directory and router, declared like every
other setting.

Contract: `LocalSettings` is a frozen, keyword-only dataclass that `Settings` inherits
(like BackupSettings: its rows come first in docs/configuration.md), here because the
settings module has no room left under the 400-line rule. LOCAL_MAX_SERVERS caps how
many local workers run on this machine (control/capacity/providers/local.py),
LOCAL_LOCATIONS the locations they may be in (each worker is in the one it was created
for; users' volumes too).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import items, setting, whole


@dataclass(frozen=True, kw_only=True)
class LocalSettings:
    local_max_servers: int = setting(
        "LOCAL_MAX_SERVERS",
        "1",
        whole(1, 8),
        "PROVIDER=local: how many local workers may run at once (2 lets a user move between them; they share this machine's Docker engine and memory, which each reports whole).",
    )
    local_locations: tuple[str, ...] = setting(
        "LOCAL_LOCATIONS",
        "local",
        items(at_least_one=True),
        "PROVIDER=local: the locations local workers may be in, comma-separated in order of preference, as HETZNER_LOCATION (a second one lets a move to another location, through a backup and a restore, run on one machine: docs/backups.md).",
    )
