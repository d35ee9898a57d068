"""Orphan volumes: volumes at the provider carrying both of our labels that no row of
the `volumes` table knows, nor a move to another location (control/volumes/relocations.py)
holds (a create that took effect after it was given up, a row lost
with a restored database).

Contract, as for orphan servers (control/capacity/orphans.py): an orphan is acted on only
after ORPHAN_SWEEPS consecutive scheduled sweeps saw it, and never when the database or
the provider could not be read (the listing backs off under SWEEP_KEY; a failed database
read raises and the scaler keeps the counts). What is done with it depends on its
`clawfleet-user` label:
- it names a user row that exists: the volume holds that customer's state (a retained
  user's, after a database restore) and is NEVER deleted. With no `volumes` row for that
  user it is adopted: recorded as the user's (records.py, in one transaction that checks
  both rows), detached, or attached to the server of ours that holds it (whose
  generation is bumped), and `orphan_volume_adopted` is recorded; it is then the user's
  volume like any other (kept, resumed, deleted after retention). Otherwise (the user
  has another volume, or it is attached to a server we do not know) it is left where it
  is and `orphan_volume_kept` is recorded once a streak of sightings, for the operator.
- no such user: it may still hold a customer's state (a database restored from before
  that customer signed up), so it is kept, untouched, until it is RETENTION_DAYS old
  by the provider's creation time (`may_remove`; never when the provider gives none),
  as long as a cancelled customer's volume is kept, and `orphan_volume_kept` says until
  when, once a streak of sightings. Then an attached orphan is detached first and
  deleted by a later sweep; at most ORPHAN_DELETES_PER_SWEEP calls a sweep, none while
  the provider's rate-limit budget is low. `orphan_volume_deleted` is recorded after
  the delete.
Only with USER_VOLUMES on.
"""

from __future__ import annotations

from datetime import UTC, datetime

import aiosqlite

from control.capacity.orphans import ORPHAN_SWEEPS, budget_left, known_keys, orphans
from control.capacity.providers.base import ProviderError, ProviderVolume
from control.capacity.provisioning import Provisioner
from control.db import events
from control.db.store import fetch_one
from control.volumes import records
from control.workers import servers

SWEEP_KEY = "orphan-volume-sweep"
DAY = 86400.0
OWNER_LABEL = "clawfleet-user"


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
    owners = await _owners(p, found)
    sightings = {volume.provider_id: count for volume, count in found}
    budget = budget_left(p)
    for volume, count in found:
        key = f"volume:{volume.provider_id}"
        if count >= ORPHAN_SWEEPS and volume.labels.get(OWNER_LABEL) in owners:
            if await _adopt(p, volume, count):
                sightings.pop(volume.provider_id)
            continue
        if count < ORPHAN_SWEEPS:
            continue
        keep_until = kept_until(volume.created_at, p.settings.retention_days)
        if keep_until is None or p.clock() < keep_until:
            if count == ORPHAN_SWEEPS:  # once a streak: say why it stays
                await p.event("orphan_volume_kept", _kept(volume, keep_until))
            continue
        if budget <= 0 or not p.due(key, p.clock()):
            continue
        budget -= 1
        if await _remove(p, volume, key, count):
            sightings.pop(volume.provider_id)
    p.state.volume_sightings = sightings


def kept_until(created_at: float | None, retention_days: float) -> float | None:
    """When a volume no user owns may go: RETENTION_DAYS after the provider created it.
    None: its age is unknown, so it is never removed by itself."""
    return None if created_at is None else created_at + retention_days * DAY


def _kept(volume: ProviderVolume, until: float | None) -> str:
    what = f"{volume.name} ({volume.provider_id}) carries our labels but no user owns it"
    if until is None:
        return f"{what}: kept, its age unknown (the operator decides)"
    when = datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%d %H:%M UTC")
    why = "RETENTION_DAYS after its creation, in case it holds a customer's state"
    return f"{what}: kept until {when} ({why})"


async def _owners(p: Provisioner, found: list[tuple[ProviderVolume, int]]) -> set[str]:
    """The users that exist among those the orphans' labels name."""
    named = sorted({v.labels[OWNER_LABEL] for v, _ in found if v.labels.get(OWNER_LABEL)})
    if not named:
        return set()
    marks = ", ".join("?" for _ in named)
    rows = await p.store.fetch_all(f"SELECT id FROM users WHERE id IN ({marks})", named)
    return {r["id"] for r in rows}


async def _adopt(p: Provisioner, volume: ProviderVolume, count: int) -> bool:
    """Records a customer's orphan as their volume; True once it is the user's. Never
    deletes: a volume that cannot be adopted is kept and reported."""
    user_id, now = volume.labels[OWNER_LABEL], p.clock()
    holder = None
    if volume.server_id is not None:
        row = await p.store.fetch_one(
            "SELECT id FROM servers WHERE provider_id = ? AND status != 'deleted'",
            (volume.server_id,),
        )
        holder = row["id"] if row else None

    async def apply(conn: aiosqlite.Connection) -> bool:
        taken = await records.get(conn, user_id)
        user = await fetch_one(conn, "SELECT id FROM users WHERE id = ?", (user_id,))
        if taken is not None or user is None or (volume.server_id and holder is None):
            if count == ORPHAN_SWEEPS:  # once a streak: the operator decides
                why = "has another volume" if taken else "is attached to a server we do not know"
                what = f"{volume.name} ({volume.provider_id}) is {user_id}'s but {why}: kept"
                await events.record(conn, "orphan_volume_kept", what, user_id=user_id, at=now)
            return False
        await records.begin_create(
            conn, user_id, volume.name, p.provider.name, volume.location, volume.size_gb, now
        )
        await records.created(conn, user_id, volume.provider_id, volume.device, now)
        if holder is not None:
            await records.set_state(conn, user_id, "attached", holder, now)
            await servers.bump_generation(conn, holder)  # its set may now carry the volume
        what = f"{volume.name} ({volume.provider_id}) carried {user_id}'s label: adopted"
        await events.record(conn, "orphan_volume_adopted", what, user_id=user_id, at=now)
        return True

    adopted = await p.store.write(apply)
    if adopted and holder is not None:
        p.notify(holder)
    return adopted


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
