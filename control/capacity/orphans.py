"""Orphans: servers at the provider carrying both of our labels that the database
does not know (e.g. a create that took effect after it was given up).

Contract: an orphan is deleted only after ORPHAN_SWEEPS consecutive scheduled sweeps
saw it, and never when the database or the provider could not be read (the listing
backs off like any resource, under SWEEP_KEY). A sweep deletes at most
ORPHAN_DELETES_PER_SWEEP of them, and none while the provider's rate-limit budget is
down to ORPHAN_BUDGET_RESERVE requests (kept for creates); `orphan_deleted` is
recorded after the delete succeeded. Sighted orphans count against MAX_SERVERS
(control/capacity/scale_up.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol, TypeVar

from control.capacity.providers.base import ProviderError
from control.capacity.provisioning import Provisioner
from control.db.store import Row

ORPHAN_SWEEPS = 3
ORPHAN_DELETES_PER_SWEEP = 5
ORPHAN_BUDGET_RESERVE = 100  # provider requests left for creates before a sweep deletes
SWEEP_KEY = "orphan-sweep"  # the sweep's listing backs off like any resource


async def sweep(p: Provisioner) -> None:
    if not p.due(SWEEP_KEY, p.clock()):
        return
    try:
        seen = await p.provider.list(p.labels)
    except ProviderError as exc:
        p.failed(SWEEP_KEY, "orphan sweep: listing servers (nothing deleted)", exc)
        return
    p.succeeded(SWEEP_KEY)
    rows = await p.store.fetch_all(
        "SELECT provider_id, name FROM servers WHERE status != 'deleted'"
    )
    found = orphans(seen, known_keys(rows), p.labels, p.state.orphan_sightings)
    sightings = {server.provider_id: count for server, count in found}
    budget = budget_left(p)
    for server, count in found:
        if count < ORPHAN_SWEEPS or budget <= 0 or not p.due(server.provider_id, p.clock()):
            continue
        budget -= 1
        try:
            await p.provider.delete(server.provider_id)
        except ProviderError as exc:
            p.failed(server.provider_id, f"delete of orphan {server.name}", exc)
            continue
        p.succeeded(server.provider_id)
        sightings.pop(server.provider_id)
        await p.event(
            "orphan_deleted",
            f"{server.name} ({server.provider_id}) carried our labels "
            f"but was unknown to the database; seen in {count} sweeps",
        )
    p.state.orphan_sightings = sightings


class Labelled(Protocol):
    """A server or a volume at the provider, as far as the sweep looks at it."""

    @property
    def provider_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def labels(self) -> dict[str, str]: ...


L = TypeVar("L", bound=Labelled)


def known_keys(rows: Iterable[Row]) -> set[str]:
    """The provider ids and names the database knows, from rows with both columns."""
    return {str(key) for r in rows for key in (r["provider_id"], r["name"]) if key}


def orphans(
    seen: Iterable[L], known: set[str], labels: Mapping[str, str], before: Mapping[str, int]
) -> list[tuple[L, int]]:
    """Each orphan in `seen` (both of our labels, unknown by id and by name) with the
    number of consecutive sweeps that saw it, this one included."""
    return [
        (found, before.get(found.provider_id, 0) + 1)
        for found in seen
        if all(found.labels.get(k) == v for k, v in labels.items())
        and found.provider_id not in known
        and found.name not in known
    ]


def budget_left(p: Provisioner) -> int:
    """Orphan deletes this sweep may make: a few, and none that would spend the
    requests kept for creates (when the provider reports its budget)."""
    remaining = getattr(p.provider, "rate_limit_remaining", None)
    if not isinstance(remaining, int):
        return ORPHAN_DELETES_PER_SWEEP
    return max(0, min(ORPHAN_DELETES_PER_SWEEP, remaining - ORPHAN_BUDGET_RESERVE))
