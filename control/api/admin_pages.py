"""Pages of the admin listings (`GET /v1/servers`, `GET /v1/users`) and the fleet
summary (`GET /v1/summary`), sized for fleets of 10k servers and 100k users (issue 16).

Contract:
- A page is at most `limit` rows (default 100, 1..500) in the order of their id, the
  table's primary key: a keyset page (`id > last id`), never an OFFSET, so a page costs
  the same wherever it is, and walking the cursors while rows are inserted or changed
  never shows a row twice nor skips one that existed when the walk began (a row
  inserted behind the cursor is seen by the next walk).
- The cursor is opaque: the listing's kind and the page's last id, base64url-encoded.
  A cursor that does not decode, or belongs to the other listing, is 400 `bad_cursor`;
  a limit out of bounds, or a filter value the listing does not know, is 400 too.
- `next_cursor` is null on the last page; a page with one is never empty.
- Filters: servers by `status`, users by `state` and `server` (its server_id); a status
  or state filter may list several values, comma-separated.
- The summary is aggregate SQL only: its counts of servers (by status, type, size) and
  users (by state) read the counts the database keeps (control/db/counts.py), not the
  tables; its reply is a few hundred bytes whatever the fleet's size. It answers the dashboard's headline numbers:
  servers by status, users by state, memory and CPUs used and total, containers
  running and desired, the servers' hourly cost and the volumes' monthly cost.
- Pages and the summary read apart from the loops' reads (control/db/read_thread.py
  `reads_apart`), as `/metrics` does: a dashboard never waits behind a sweep's read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from control.api import views
from control.clock import iso
from control.db import counts
from control.db.read_thread import reads_apart
from control.db.store import Row
from control.errors import BadRequest

if TYPE_CHECKING:
    from control.fleet import Fleet

Kind = Literal["servers", "users"]
DEFAULT_LIMIT = 100
MAX_LIMIT = 500
SERVER_STATUSES = frozenset({"provisioning", "active", "unhealthy", "dead", "deleting", "deleted"})
USER_STATES = frozenset({"pending", "provisioning", "running", "suspended", "deprovisioned"})
# Servers whose memory and CPUs do not count in the totals: the dashboard's own rule (a
# dead server's room is not there, a deleted one is gone).
_NOT_COUNTED = ("dead", "deleted")


@dataclass(frozen=True)
class PageQuery:
    """One page's request: how many, after which id, and the filters."""

    limit: int
    after: str | None
    values: tuple[str, ...]  # servers: statuses; users: states (empty: all)
    server: str | None = None


def encode_cursor(kind: Kind, last_id: str) -> str:
    raw = json.dumps([kind, last_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: Kind, cursor: str) -> str:
    """The last id of the page before; 400 `bad_cursor` for anything but a cursor of
    this listing."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = json.loads(raw)
    except (binascii.Error, ValueError):
        decoded = None
    if (
        not isinstance(decoded, list)
        or len(decoded) != 2
        or decoded[0] != kind
        or not isinstance(decoded[1], str)
    ):
        raise BadRequest(f"cursor: not a cursor of /v1/{kind}", code="bad_cursor")
    return decoded[1]


def parse_page(kind: Kind, query: Mapping[str, str]) -> PageQuery:
    """The page a query string asks for (pure; 400 for anything out of bounds)."""
    limit_text = query.get("limit") or str(DEFAULT_LIMIT)
    if not limit_text.isascii() or not limit_text.isdigit() or len(limit_text) > 6:
        raise BadRequest(f"limit: expected an integer from 1 to {MAX_LIMIT}, got {limit_text!r}")
    limit = int(limit_text)
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit: expected an integer from 1 to {MAX_LIMIT}, got {limit}")
    cursor = query.get("cursor")
    after = decode_cursor(kind, cursor) if cursor else None
    name, known = ("status", SERVER_STATUSES) if kind == "servers" else ("state", USER_STATES)
    values = tuple(sorted({v for v in (query.get(name) or "").split(",") if v}))
    unknown = [v for v in values if v not in known]
    if unknown:
        raise BadRequest(f"{name}: unknown {', '.join(unknown)}; one of {', '.join(sorted(known))}")
    server = query.get("server") or None if kind == "users" else None
    return PageQuery(limit, after, values, server)


# The bulk of each table: a filter naming it walks the id order and skips the rest
# (the page ends after `limit` rows); a rarer value is found through its index and
# sorted. Through the index, a page of active servers sorted 10k rows every time.
_BULK = frozenset({"active", "running"})


def page_sql(page: PageQuery, column: str, id_column: str) -> tuple[str, list[object]]:
    """The WHERE and LIMIT of a page (one row more than asked: is there a next page?)."""
    where: list[str] = []
    params: list[object] = []
    if page.after is not None:
        where.append(f"{id_column} > ?")
        params.append(page.after)
    if page.values:
        walk = "+" if _BULK & set(page.values) else ""  # `+`: not through the index
        where.append(f"{walk}{column} IN ({', '.join('?' * len(page.values))})")
        params.extend(page.values)
    if page.server is not None:
        where.append("u.server_id = ?")
        params.append(page.server)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    return f"{clause}ORDER BY {id_column} LIMIT ?", [*params, page.limit + 1]


def _cut(kind: Kind, rows: list[Any], page: PageQuery, id_key: str) -> tuple[list[Any], str | None]:
    if len(rows) <= page.limit:
        return rows, None
    rows = rows[: page.limit]
    return rows, encode_cursor(kind, rows[-1][id_key])


async def server_page(
    fleet: Fleet, page: PageQuery, firewall: Mapping[str, object] | None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of server views and the next page's cursor (None: the last page)."""
    tail, params = page_sql(page, "status", "id")
    with reads_apart():  # never behind the sweeps' reads (control/db/read_thread.py)
        sql = f"SELECT {views.SERVER_COLUMNS} FROM servers {tail}"
        rows, cursor = _cut("servers", await fleet.store.fetch_all(sql, params), page, "id")
        return await views.server_views(fleet, rows, firewall), cursor


async def user_page(fleet: Fleet, page: PageQuery) -> tuple[list[dict[str, Any]], str | None]:
    """One page of user views and the next page's cursor (None: the last page)."""
    tail, params = page_sql(page, "u.state", "u.id")
    with reads_apart():
        rows, cursor = _cut("users", await views.user_rows(fleet, tail, params), page, "id")
        return await views.user_views(fleet, rows), cursor


async def summary(fleet: Fleet) -> dict[str, Any]:
    """The fleet's headline numbers: servers and users from the counts the database
    keeps (control/db/counts.py, a few rows whatever the fleet's size), the oldest
    pending user through its index, and what the placed users take."""
    (groups, by_state, oldest, volume_cost), used = await asyncio.gather(
        _counted(fleet), _used(fleet)
    )
    return {
        "servers": _server_counts(groups),
        "users": {
            "total": sum(by_state.values()),
            "by_state": by_state,
            "oldest_pending_since": iso(oldest["t"] if oldest else None),
        },
        "capacity": _capacity(used, _totals(groups)),
        # Desired: placed to run; running: reported running and healthy (the state says).
        "containers": {
            "running": by_state.get("running", 0),
            "desired": by_state.get("running", 0) + by_state.get("provisioning", 0),
        },
        "cost": _server_cost(fleet, groups),
        "volume_cost": volume_cost,
    }


async def _counted(fleet: Fleet) -> tuple[list[Row], dict[str, int], Row | None, Any]:
    """The summary's reads, on the thread apart (control/db/read_thread.py): never behind
    the sweeps' reads. Asked at once: they queue on that thread back to back, instead of
    each waiting for the event loop's turn before the next is sent (at 10k workers that
    wait was most of the summary's 20 ms)."""
    reserve = fleet.reserve
    with reads_apart():
        groups, by_state, oldest, volume_cost = await asyncio.gather(
            counts.server_groups(fleet.store, reserve.memory_mb, reserve.cpus),
            counts.users_by_state(fleet.store),
            fleet.store.fetch_one("SELECT MIN(updated_at) AS t FROM users WHERE state = 'pending'"),
            views.volume_cost(fleet),
        )
    return groups, by_state, oldest, volume_cost


def _server_counts(groups: list[Row]) -> dict[str, Any]:
    by_status: dict[str, int] = {}
    for g in groups:
        by_status[g["status"]] = by_status.get(g["status"], 0) + g["n"]
    live = [g for g in groups if g["status"] != "deleted"]
    return {
        "live": sum(g["n"] for g in live),
        "by_status": by_status,
        "cordoned": sum(g["cordoned"] or 0 for g in live),
        "draining": sum(g["draining"] or 0 for g in live),
    }


def _capacity(used: dict[str, Any], total: dict[str, Any]) -> dict[str, Any]:
    return {
        "memory_mb": {"used": used["memory_mb_used"], "total": total["memory_mb_total"]},
        "cpus": {"used": used["cpus_used"], "total": total["cpus_total"]},
    }


def _totals(groups: list[Row]) -> dict[str, Any]:
    """Memory and CPUs of the counted servers, less the system reserve."""
    counted = [g for g in groups if g["status"] not in _NOT_COUNTED]
    return {
        "memory_mb_total": sum(g["memory_mb"] or 0 for g in counted),
        "cpus_total": round(sum(g["cpus"] or 0 for g in counted), 4),
    }


async def _used(fleet: Fleet) -> dict[str, Any]:
    """What the users held by the counted servers take (a moving user on both), from the
    room index (control/users/room_index.py `used`: its COUNTED are all but _NOT_COUNTED),
    in memory: no read of every placed user per summary."""
    await fleet.room_index.synced()  # what another connection wrote, too
    memory_mb, cpus = fleet.room_index.used()
    return {"memory_mb_used": memory_mb, "cpus_used": round(cpus, 4)}


def _server_cost(fleet: Fleet, groups: list[Row]) -> dict[str, Any]:
    """The live servers' list prices per hour, from their count by type."""
    priced = [
        (fleet.price_of(g["server_type"]), g["n"]) for g in groups if g["status"] != "deleted"
    ]
    known = [(price, n) for price, n in priced if price is not None]
    return {
        "hourly": round(sum(price * n for price, n in known), 6) if known else None,
        "priced_servers": sum(n for _, n in known),
        "unpriced_servers": sum(n for price, n in priced if price is None),
    }
