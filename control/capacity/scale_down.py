"""Scaling down and draining: idle servers past SCALE_DOWN_IDLE go, and a draining
server's users move off one at a time before it goes.

Contract:
- `scale_down` runs only when no user is pending; it deletes the servers
  `decisions.idle_to_delete` picks (above MIN_SERVERS, not needed for headroom and open
  checkouts, near the end of a billed hour where the provider bills started hours),
  each cordoned in the same transaction that checks it is still empty, so no user can
  be placed between the decision and the deletion.
- No server whose disk holds users' data (retained or suspended) is deleted, whether
  idle or drained (`decisions.kept_because`).
- `drain` moves a draining server's users make-before-break, one at a time, and
  deletes it once nothing holds it (`decisions.drain_action`). With USER_VOLUMES the
  move is break-before-make (the volume follows the user), and with backups on the
  move's transaction also asks the draining server for the user's final snapshot
  (control/volumes/backups.py `on_drain_move`), so the set that withdraws the
  container carries it.
"""

from __future__ import annotations

import functools

import aiosqlite

from control.capacity import decisions
from control.capacity.provisioning import Provisioner
from control.db.store import fetch_one
from control.users import placing
from control.users.rooms import HELD_DATA_SQL, HOLDERS_SQL
from control.volumes import backups as volume_backups
from control.workers import assignments, servers


def billing_window(interval: float) -> float:
    """How close to the end of a billed hour an idle server may be deleted: wide enough
    that a few autoscaler runs fall inside it, never more than half the hour."""
    return min(decisions.HOUR / 2, max(300.0, 3 * interval))


async def held(p: Provisioner) -> dict[str, decisions.HeldData]:
    rows = await p.store.fetch_all(HELD_DATA_SQL)
    return decisions.held_by_server((r["holder"], r["kind"], r["purge_after"]) for r in rows)


async def scale_down(p: Provisioner) -> None:
    now = p.clock()
    pending, active, _, servers_now = await p.snapshot()
    if pending:
        return
    await p.store.write(lambda conn: servers.track_empty(conn, HOLDERS_SQL, now))
    rows = await p.store.fetch_all(
        "SELECT id, empty_since, create_confirmed_at, registered_at, created_at FROM servers "
        "WHERE status = 'active' AND origin = 'provider' AND empty_since IS NOT NULL"
    )
    unit = p.unit()
    by_id = {r.server_id: r for r in active}
    kept = await held(p)
    idle = [
        decisions.IdleServer(
            r["id"],
            r["empty_since"],
            r["create_confirmed_at"] or r["registered_at"] or r["created_at"],
            decisions.units(by_id[r["id"]], unit) if r["id"] in by_id else 0,
            decisions.kept_because(kept.get(r["id"])),
        )
        for r in rows
    ]
    chosen = decisions.idle_to_delete(
        idle,
        now=now,
        idle_after=p.settings.scale_down_idle,
        servers_now=servers_now,
        min_servers=p.settings.min_servers,
        fleet_free_units=sum(decisions.units(r, unit) for r in active),
        headroom=await p.headroom(),
        bills_hourly=p.provider.bills_hourly,
        billing_window=billing_window(p.settings.autoscale_interval),
    )
    for server_id in chosen:
        if await _cordon_if_empty(p, server_id):
            row = await p.store.fetch_one("SELECT * FROM servers WHERE id = ?", (server_id,))
            if row is not None:
                idle_for = now - row["empty_since"] if row["empty_since"] else 0.0
                await p.delete(row, "scale_down", f"empty for {idle_for:.0f}s")


async def _cordon_if_empty(p: Provisioner, server_id: str) -> bool:
    """Cordons in the same transaction that checks emptiness, so no user can be
    placed between the decision and the deletion."""

    async def apply(conn: aiosqlite.Connection) -> bool:
        busy = await fetch_one(
            conn,
            f"SELECT holder FROM ({HOLDERS_SQL}) WHERE holder = ? UNION ALL "
            f"SELECT holder FROM ({HELD_DATA_SQL}) WHERE holder = ?",
            (server_id, server_id),
        )
        if busy:
            await servers.clear_empty(conn, server_id)
            return False
        await servers.cordon(conn, server_id)
        return True

    return await p.store.write(apply)


async def drain(p: Provisioner) -> None:
    kept = await held(p)
    for server in await p.store.fetch_all(
        "SELECT * FROM servers WHERE draining = 1 AND status IN ('active', 'unhealthy')"
    ):
        holders = await p.store.fetch_all(
            "SELECT id, plan, server_id, moving_from FROM users WHERE "
            "(server_id = ? AND state IN ('provisioning', 'running')) OR moving_from = ?",
            (server["id"], server["id"]),
        )
        action = decisions.drain_action(
            len(holders),
            any(h["moving_from"] == server["id"] for h in holders),
            decisions.kept_because(kept.get(server["id"])),
        )
        if action == "delete":
            await p.delete(server, "server_drained", "drained: no users left")
        if action == "move":  # else kept: its disk holds users' data; wait: one move at a time
            await _move(p, holders[0]["id"], server["id"])


async def _move(p: Provisioner, user_id: str, source: str) -> None:
    start = functools.partial(
        placing.start_move,
        plans=p.settings.plans,
        reserve=p.reserve,
        user_id=user_id,
        target=None,
        reason=f"draining {source}",
        needs=p.needs,
        index=p.room_index,
    )

    async def change(conn: aiosqlite.Connection) -> tuple[tuple[str, str] | None, set[str]]:
        moved = await start(conn)
        if moved is None or not (p.settings.user_volumes and p.settings.backups_enabled):
            return moved, set()
        return moved, await volume_backups.on_drain_move(conn, user_id, source, p.clock())

    moved, _ = await assignments.commit(
        p.store, change, lambda r: [*(r[0][1:] if r[0] else ()), *r[1]]
    )
    if moved:
        p.notify(moved[1], source)
