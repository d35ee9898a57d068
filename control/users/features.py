"""Agent features: what a worker's agent declared it implements, and what a user's
spec needs of it (docs/protocol.md, "Agent features"). Pure.

Contract: `stored` keeps only the names the protocol knows (shared.protocol.FEATURES):
an unknown name is ignored, never stored, so nothing can be granted that this control
plane would not check. `required_features` is what every user's spec needs under the
given configuration: block-volumes with USER_VOLUMES, backup-jobs with backups (they
are jobs on the user's volume, so only with USER_VOLUMES too), health-headers when the
profile's health check sends headers, tenant-files when it has a config or secret file,
signin-gate when its sign-in gate is on. cpu-weight is declared but never required: an
agent without it caps CPU at the reserved share, slower but never wrong.
`withheld_reason` is the sentence a user on a server lacking some of them shows.
"""

from __future__ import annotations

from collections.abc import Iterable

from control.settings import Settings
from control.settings.profiles import Profile
from shared.protocol import FEATURES


def stored(declared: Iterable[str]) -> str:
    """The known features of `declared`, as the servers table keeps them."""
    return ",".join(sorted(set(declared) & FEATURES))


def parse(text: str | None) -> frozenset[str]:
    """A server's stored features; a server that never declared any has none."""
    return frozenset(text.split(",")) & FEATURES if text else frozenset()


def required_features(*, user_volumes: bool, backups: bool, profile: Profile) -> frozenset[str]:
    needs = {
        "block-volumes": user_volumes,
        "backup-jobs": backups and user_volumes,
        "health-headers": bool(profile.health_headers),
        "tenant-files": profile.config is not None or bool(profile.secret_volume),
        "signin-gate": profile.signin,
    }
    return frozenset(name for name, needed in needs.items() if needed)


def fleet_needs(settings: Settings) -> frozenset[str]:
    """What every user's spec needs under `settings` (the profile is fleet-wide)."""
    return required_features(
        user_volumes=settings.user_volumes,
        backups=settings.backups_enabled,
        profile=settings.tenant_profile,
    )


def withheld_reason(
    server_id: str, needs: frozenset[str], has: frozenset[str] | None
) -> str | None:
    """Why a user on `server_id` gets no spec there, or None when its agent can run it
    (`has` None: a server not yet created, which runs this version's agent)."""
    missing = sorted(needs - has) if has is not None else []
    if not missing:
        return None
    return (
        f"worker {server_id} runs an agent without {', '.join(missing)}; "
        "drain it or upgrade its agent"
    )
