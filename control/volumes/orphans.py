"""Orphan volumes: volumes at the provider carrying both of our labels that no row of
the `volumes` table knows, nor a move to another location (control/volumes/relocations.py)
holds (a create that took effect after it was given up, a row lost
with a restored database).

Contract, as for orphan servers (control/capacity/orphans.py): an orphan is acted on only
after ORPHAN_SWEEPS consecutive scheduled sweeps saw it, and never when the database or
the provider could not be read (the listing backs off under SWEEP_KEY; a failed database
read raises and the scaler keeps the counts). An attached orphan is detached first and
deleted by a later sweep; at most ORPHAN_DELETES_PER_SWEEP calls a sweep, none while the
provider's rate-limit budget is low. `orphan_volume_deleted` is recorded after the delete.
Only with USER_VOLUMES on.
"""

from __future__ import annotations

from control.capacity.orphans import ORPHAN_SWEEPS, budget_left, known_keys, orphans
from control.capacity.providers.base import ProviderError, ProviderVolume
from control.capacity.provisioning import Provisioner

SWEEP_KEY = "orphan-volume-sweep"


async def sweep(p: Provisioner) -> None:
    if not p.settings.user_volumes or not p.due(SWEEP_KEY, p.clock()):
        return
    try:
        seen = await p.provider.list_volumes(p.labels)
    except ProviderError as exc:
        p.failed(SWEEP_KEY, "orphan sweep: listing volumes (nothing deleted)", exc)
        return
    p.succeeded(SWEEP_KEY)
    rows = await p.store.fetch_all(
        # A move to another location holds two volumes, both known until it ends.
        "SELECT provider_id, name FROM volumes UNION ALL "
        "SELECT old_provider_id, old_name FROM relocations UNION ALL "
        "SELECT new_provider_id, new_name FROM relocations"
    )
    found = orphans(seen, known_keys(rows), p.labels, p.state.volume_sightings)
    sightings = {volume.provider_id: count for volume, count in found}
    budget = budget_left(p)
    for volume, count in found:
        key = f"volume:{volume.provider_id}"
        if count < ORPHAN_SWEEPS or budget <= 0 or not p.due(key, p.clock()):
            continue
        budget -= 1
        if await _remove(p, volume, key, count):
            sightings.pop(volume.provider_id)
    p.state.volume_sightings = sightings


async def _remove(p: Provisioner, volume: ProviderVolume, key: str, count: int) -> bool:
    """Detaches an attached orphan (deleted by a later sweep) or deletes a detached one;
    True once it is deleted."""
    try:
        if volume.server_id is not None:
            await p.provider.detach(volume)
        else:
            await p.provider.delete_volume(volume)
    except ProviderError as exc:
        p.failed(key, f"removing orphan volume {volume.name}", exc)
        return False
    p.succeeded(key)
    if volume.server_id is not None:
        return False
    await p.event(
        "orphan_volume_deleted",
        f"{volume.name} ({volume.provider_id}) carried our labels but no user owned it; "
        f"seen in {count} sweeps",
    )
    return True
