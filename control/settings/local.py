"""The local provider's variables beyond its directory and router, declared like every
other setting.

Contract: `LocalSettings` is a frozen, keyword-only dataclass that `Settings` inherits
(like BackupSettings: its rows come first in docs/configuration.md), here because the
settings module has no room left under the 400-line rule. LOCAL_MAX_SERVERS caps how
many local workers run on this machine (control/capacity/providers/local.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import setting, whole


@dataclass(frozen=True, kw_only=True)
class LocalSettings:
    local_max_servers: int = setting(
        "LOCAL_MAX_SERVERS",
        "1",
        whole(1, 8),
        "PROVIDER=local: how many local workers may run at once (2 lets a user move between them; they share this machine's Docker engine and memory, which each reports whole).",
    )
