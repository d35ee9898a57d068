"""Scaling up: how many servers pending users (and users leaving draining servers)
need, capped, and creating them.

Contract: `scale_up` creates what `servers_needed` asks for (the headroom counting open
checkouts: `Provisioner.headroom`), never past MAX_SERVERS nor
MAX_CREATES_PER_RUN (`cap_creates`), counting every row not `deleted`, orphans
currently sighted and creates whose outcome is unknown. Demand the caps hold back is
logged, recorded (`scale_capped`) and kept in `state.held_back` for the metrics. No
create while scale-up is paused by a provider error or every (type, location) pair
is cooling down.
"""

from __future__ import annotations

import logging

from control.capacity import decisions
from control.capacity.provisioning import Provisioner

log = logging.getLogger(__name__)


async def scale_up(p: Provisioner) -> None:
    now = p.clock()
    pairs = p.usable_pairs(now)
    if now < p.state.paused_until or not pairs:
        return
    pending, active, on_the_way, servers_now = await p.snapshot()
    headroom = await p.headroom()
    need = decisions.servers_needed(
        pending,
        active,
        on_the_way,
        p.type_room(pairs[0][0], "new"),
        p.unit(),
        headroom,
    )
    for user_id in need.infeasible:
        await p.event(
            "user_unplaceable", f"user {user_id}: its plan fits no server type {pairs[0][0]}"
        )
    # Sighted orphans exist too (e.g. a create that took effect after it was given up).
    servers_now += len(p.state.orphan_sightings)
    capped = decisions.cap_creates(
        need.servers, servers_now, p.max_servers, p.settings.max_creates_per_run
    )
    p.state.held_back = capped.held_back
    if capped.reason:
        log.warning(
            "autoscaler: %s holds back %d server(s) of demand (%d pending users)",
            capped.reason,
            capped.held_back,
            len(pending),
        )
        await p.event(
            "scale_capped",
            f"{capped.reason} holds back {capped.held_back} server(s); "
            f"{len(pending)} user(s) pending",
        )
    for i in range(capped.create):
        if not await p.create_one(
            f"{len(pending)} pending user(s), headroom {headroom}",
            need.locations[i] if i < len(need.locations) else None,
        ):
            break
