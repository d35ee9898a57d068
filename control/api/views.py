"""JSON shapes of servers and users in the admin API (read side only).

Costs are the provider's list prices, net of VAT, in its currency, None when it gave
none: a server's `hourly_price`, a user's `volume.monthly_price` (size x the price of a
GB-month) and, beside the servers listing and in the summary, `volume_cost` (from the
volumes' counts the database keeps, control/db/counts.py). A server shows the agent
`features` it declared; a user on a server whose agent lacks some its spec needs shows
why in `spec_withheld` (control/users/features.py), else None. `firewall` says whether
the cluster's edge firewall covers the server (control/edge/firewall_rules.py
`coverage`). `origin_cert` is how its origin certificate stands
(control/edge/tls_rules.py `cert_state`: off, ok, renew_due, expired or missing; None
before its first heartbeat and once retired)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from control.billing.rules import shown_billing_state
from control.capacity import decisions
from control.capacity.providers.base import VolumePrice
from control.clock import iso
from control.db import counts
from control.db.read_thread import reads_apart
from control.db.store import Row, Store
from control.edge import tls_rules
from control.edge.firewall_rules import coverage
from control.plans import Plan
from control.users.features import parse, withheld_reason
from control.users.plans import plan_of
from control.users.rooms import HELD_DATA_SQL, Reserve, holders_among
from control.workers.servers import RETIRED_STATUSES

if TYPE_CHECKING:
    from control.fleet import Fleet

SERVER_COLUMNS = (
    "id, name, status, origin, provider, provider_id, public_ip, hostname, cordoned, draining, "
    "cpus, memory_mb, disk_gb, agent_version, generation, applied_generation, heartbeat_interval, "
    "server_type, location, known_cpus, known_memory_mb, known_disk_gb, capacity_source, "
    "overclaim, overclaim_at, features, "
    "last_heartbeat, registered_at, created_at, report"
)


def _reports(report: str | None) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    data = json.loads(report) if report else {}
    containers = {c["user_id"]: c for c in data.get("containers", [])}
    return containers, data.get("host") or {}


def server_view(
    row: Row, users: list[Row], plans: dict[str, Plan], reserve: Reserve, now: float
) -> dict[str, Any]:
    reported, host = _reports(row["report"])
    desired = {u["id"] for u in users}
    containers = [
        {"user_id": u["id"], "desired": True, **_container(reported.get(u["id"]))} for u in users
    ] + [
        {"user_id": uid, "desired": False, **_container(c)}
        for uid, c in sorted(reported.items())
        if uid not in desired
    ]
    used_mem = sum(plan_of(plans, u["plan"]).memory_mb for u in users)
    used_cpu = sum(plan_of(plans, u["plan"]).cpus for u in users)
    last = row["last_heartbeat"]
    return {
        "id": row["id"],
        "name": row["name"],
        "status": row["status"],
        "origin": row["origin"],
        "provider": row["provider"],
        "provider_id": row["provider_id"],
        "public_ip": row["public_ip"],
        "hostname": row["hostname"],
        "server_type": row["server_type"],
        "location": row["location"],
        "cordoned": bool(row["cordoned"]),
        "draining": bool(row["draining"]),
        # Set when its agent claimed more than the server has: no more users until an
        # operator uncordons it (control/workers/trust.py).
        "overclaim": row["overclaim"],
        "overclaim_at": iso(row["overclaim_at"]),
        # What the control plane knows the server has; capacity never exceeds it.
        "known": {
            "cpus": row["known_cpus"],
            "memory_mb": row["known_memory_mb"],
            "disk_gb": row["known_disk_gb"],
        },
        "capacity_source": row["capacity_source"],
        "agent_version": row["agent_version"],
        "features": sorted(parse(row["features"])),
        "last_heartbeat_age": None if last is None else round(max(0.0, now - last), 1),
        "heartbeat_interval": row["heartbeat_interval"],
        "generation": row["generation"],
        "applied_generation": row["applied_generation"],
        "capacity": {
            "memory_mb": {"used": used_mem, "total": _less(row["memory_mb"], reserve.memory_mb)},
            "cpus": {"used": used_cpu, "total": _less(row["cpus"], reserve.cpus)},
            "users": len(users),
        },
        "containers_desired": len(users),
        "containers_running": sum(
            1 for c in containers if c["desired"] and c["state"] == "running"
        ),
        "containers": containers,
        # origin_cert_expires: Unix seconds the worker's origin certificate expires, or None.
        **{k: host.get(k) for k in ("metadata_blocked", "docker_version", "origin_cert_expires")},
        "created_at": iso(row["created_at"]),
        "registered_at": iso(row["registered_at"]),
    }


def _less(total: float | None, reserve: float) -> float | None:
    return None if total is None else max(0, total - reserve)


def _container(report: dict[str, Any] | None) -> dict[str, Any]:
    if report is None:
        return {
            "state": "unknown",
            "health": "unknown",
            "image_id": None,
            "started_at": None,
            "restart_count": None,
            "error": None,
        }
    return {
        k: report.get(k)
        for k in ("state", "health", "image_id", "started_at", "restart_count", "error")
    }


async def servers(
    fleet: Fleet, server_id: str | None = None, firewall: Mapping[str, object] | None = None
) -> list[dict[str, Any]]:
    """Every server's view, or `server_id`'s alone; `firewall` is the edge firewall
    sync's `status()` (None: none runs). The listing pages through
    control/api/admin_pages.py instead."""
    where, params = ("WHERE id = ?", (server_id,)) if server_id else ("", ())
    rows = await fleet.store.fetch_all(
        f"SELECT {SERVER_COLUMNS} FROM servers {where} ORDER BY created_at, id",
        params,
    )
    return await server_views(fleet, rows, firewall)


async def server_views(
    fleet: Fleet, rows: list[Row], firewall: Mapping[str, object] | None
) -> list[dict[str, Any]]:
    """The views of these server rows: their users and held data are read for these
    servers only, and each report is parsed once."""
    store, plans, reserve = fleet.store, fleet.plans, fleet.reserve
    ids = [r["id"] for r in rows]
    if not ids:
        return []
    among = f"({', '.join('?' * len(ids))})"
    # Asked at once: back to back on the read thread, not each after the loop's turn.
    users, held_rows = await asyncio.gather(
        store.fetch_all(f"{holders_among(among)} ORDER BY id", ids * 3),
        store.fetch_all(f"SELECT * FROM ({HELD_DATA_SQL}) WHERE holder IN {among}", ids),
    )
    held = decisions.held_by_server((r["holder"], r["kind"], r["purge_after"]) for r in held_rows)
    by_server: dict[str, list[Row]] = {}
    for u in users:
        by_server.setdefault(u["holder"], []).append(u)
    now = time.time()
    tls_on = tls_rules.enabled(fleet.settings.provider, fleet.settings.dns_provider)
    views = [server_view(r, by_server.get(r["id"], []), plans, reserve, now) for r in rows]
    for view in views:
        gone = view["status"] == "deleted"
        view["hourly_price"] = fleet.price_of(view["server_type"]) if not gone else None
        # Why an empty server is not deleted (idle or drained): it holds users' data.
        view["kept_because"] = None if gone else decisions.kept_because(held.get(view["id"]))
        # Whether the cluster firewall covers it: never a server joined by hand.
        view["firewall"] = coverage(view["origin"], firewall)
        view["origin_cert"] = _origin_cert(view, tls_on, now)
    return views


def _origin_cert(view: dict[str, Any], on: bool, now: float) -> str | None:
    """How its origin certificate stands; None until its agent beats, and once retired."""
    if view["last_heartbeat_age"] is None or view["status"] in RETIRED_STATUSES:
        return None
    return tls_rules.cert_state(on, view["origin_cert_expires"], now)


async def volume_cost(fleet: Fleet) -> dict[str, Any]:
    """What the users' volumes cost together per month, for the servers listing."""
    with reads_apart():  # never behind the sweeps' reads (control/db/read_thread.py)
        count, size_gb = await counts.volume_totals(fleet.store)  # kept by the database
    price = fleet.volume_price()
    return {
        "count": count,
        "size_gb": size_gb,
        "monthly_price": _monthly(size_gb, price),
        "currency": price.currency if price else None,
    }


def _monthly(size_gb: int, price: VolumePrice | None) -> float | None:
    return round(size_gb * price.per_gb_month, 4) if price is not None else None


USER_SQL = (
    "SELECT u.*, v.state AS volume_state, v.location AS volume_location, "
    "v.server_id AS volume_server, v.size_gb AS volume_size, v.last_error AS volume_error, "
    "m.phase AS move_phase, m.source_server AS move_from, m.target_server AS move_to, "
    "m.target_location AS move_location, m.snapshot_id AS move_snapshot, "
    "m.last_error AS move_error "
    "FROM users u LEFT JOIN volumes v ON v.user_id = u.id "
    "LEFT JOIN relocations m ON m.user_id = u.id "
)


async def users(fleet: Fleet, user_id: str | None = None) -> list[dict[str, Any]]:
    """Every user's view, or `user_id`'s alone. The listing pages through
    control/api/admin_pages.py instead."""
    where, params = ("WHERE u.id = ?", (user_id,)) if user_id else ("", ())
    rows = await user_rows(fleet, f"{where} ORDER BY u.created_at, u.id", params)
    return await user_views(fleet, rows)


async def user_rows(fleet: Fleet, tail: str, params: Iterable[object]) -> list[Row]:
    """Users with their volume and move; `tail` is the WHERE, ORDER BY and LIMIT."""
    return await fleet.store.fetch_all(USER_SQL + tail, params)


async def user_views(fleet: Fleet, rows: list[Row]) -> list[dict[str, Any]]:
    """The views of these user rows; each of their servers' reports is read and parsed
    once, however many of the users it holds."""
    price, needs = fleet.volume_price(), fleet.needs
    ids = sorted({r["server_id"] for r in rows if r["server_id"]})
    servers = (
        await fleet.store.fetch_all(
            f"SELECT id, report, features FROM servers WHERE id IN ({', '.join('?' * len(ids))})",
            ids,
        )
        if ids
        else []
    )
    reports = {s["id"]: _reports(s["report"])[0] for s in servers}
    features = {s["id"]: parse(s["features"]) for s in servers}
    return [_user_view(r, reports, features, needs, price) for r in rows]


def _user_view(
    r: Row,
    reports: Mapping[str, dict[str, dict[str, Any]]],
    features: Mapping[str, frozenset[str]],
    needs: frozenset[str],
    price: VolumePrice | None,
) -> dict[str, Any]:
    server_id = r["server_id"]
    reported = reports.get(server_id, {}) if server_id else {}
    return {
        "user_id": r["id"],
        "subdomain": r["subdomain"],
        "plan": r["plan"],
        "state": r["state"],
        "server_id": server_id,
        "billing_status": r["billing_status"],
        # Two sources (control/billing/rules.py): may billing let it run, and the
        # operator's hold (suspended, deleted) until they resume it.
        "billing_state": shown_billing_state(r),
        "hold": r["hold"],
        "billing_conflict": r["billing_conflict"],
        "stripe_customer_id": r["stripe_customer_id"],
        "stripe_subscription_id": r["stripe_subscription_id"],
        "error": r["error"],
        "data_server_id": r["data_server_id"],
        "moving_from": r["moving_from"],
        # Its server's agent cannot run its spec: the reason, or None.
        "spec_withheld": _withheld(r, needs, features.get(server_id or "", frozenset())),
        "purge_after": iso(r["purge_after"]),
        "container": _container(reported.get(r["id"])) if server_id else None,
        # USER_VOLUMES: where the user's data is, and why it waits (control/volumes/).
        "volume": _volume(r, price),
        # A move to another location, through a backup and a restore, or None.
        "move": _move(r),
        "created_at": iso(r["created_at"]),
        "updated_at": iso(r["updated_at"]),
    }


def _withheld(row: Row, needs: frozenset[str], declared: frozenset[str]) -> str | None:
    server_id = row["server_id"]
    if server_id is None or row["state"] not in ("provisioning", "running"):
        return None
    return withheld_reason(server_id, needs, declared)


def _move(row: Row) -> dict[str, Any] | None:
    if row["move_phase"] is None:
        return None
    return {
        "phase": row["move_phase"],  # control/volumes/relocation.py
        "from": row["move_from"],
        "to": row["move_to"],
        "location": row["move_location"],
        "snapshot_id": row["move_snapshot"],
        "error": row["move_error"],
    }


def _volume(row: Row, price: VolumePrice | None) -> dict[str, Any] | None:
    if row["volume_state"] is None:
        return None
    return {
        "state": row["volume_state"],
        "location": row["volume_location"],
        "server_id": row["volume_server"],
        "size_gb": row["volume_size"],
        "error": row["volume_error"],
        "monthly_price": _monthly(row["volume_size"], price),
        "currency": price.currency if price else None,
    }


async def events(store: Store, limit: int, before: int | None) -> list[dict[str, Any]]:
    where, params = ("WHERE id < ?", (before, limit)) if before else ("", (limit,))
    rows = await store.fetch_all(
        f"SELECT * FROM events {where} ORDER BY id DESC LIMIT ?",
        params,
    )
    return [
        {
            "id": r["id"],
            "at": iso(r["at"]),
            "kind": r["kind"],
            "server_id": r["server_id"],
            "user_id": r["user_id"],
            "message": r["message"],
        }
        for r in rows
    ]
