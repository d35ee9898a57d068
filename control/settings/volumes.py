"""USER_VOLUMES, declared like every other setting.

Contract: `VolumeSettings` is a frozen, keyword-only dataclass that `Settings` inherits
(like BackupSettings and LocalSettings: the settings module has no room left under the
400-line rule). USER_VOLUMES is `auto`, `true` or `false`; `Settings.from_env` resolves
`auto` with `resolve_user_volumes`: on with PROVIDER=hetzner, where a server's death
must never cost a customer their state, and off with PROVIDER=local, where a volume is
a loop device that needs root (a laptop's `make run` need not be root).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import choice, setting

DOC = (
    "One provider volume per user (a Hetzner Volume; a loop device locally) that follows "
    "the user between servers; a user's container starts only once its volume is mounted "
    "(docs/capacity.md). auto: on with PROVIDER=hetzner, off with PROVIDER=local (loop "
    "devices need root). Needs agents that mount block volumes."
)


@dataclass(frozen=True, kw_only=True)
class VolumeSettings:
    user_volumes: bool = setting(
        "USER_VOLUMES", "auto", choice("auto", "true", "false"), DOC, value=False
    )


def resolve_user_volumes(value: str, provider: str) -> bool:
    return provider == "hetzner" if value == "auto" else value == "true"
