"""The operator's start of a move to another location (issue 13; the moves themselves
are control/volumes/relocate.py's).

Contract: `start(...)` (POST /v1/users/{id}/move with a location, or a server in another
location than the user's volume, `crosses_locations`): Conflict `backups_off` without
BACKUP_S3_ENDPOINT, `no_volume` when the user's volume is not attached where it runs,
`move_in_progress`, and placement's
own refusals (control/users/placing.py `start_relocation`, which counts the target's
memory, CPU and volume slot). In one transaction the user is placed on the target (so
no server runs it), the move is recorded (`stopping`, with the name its new volume
will have) and the source's generation bumped; the source is notified after.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import aiosqlite

from control.capacity.providers.hetzner_volumes import volume_name
from control.db.store import Row, Store, fetch_one
from control.errors import Conflict, NotFound
from control.plans import Plan
from control.settings import Settings
from control.users import placing
from control.users.room_index import RoomIndex
from control.users.rooms import Reserve
from control.volumes import records, relocations
from control.workers import servers

NAME_MAX = 64  # Hetzner's


def new_volume_name(cluster: str, user_id: str, location: str) -> str:
    """Another name than the old volume's (names are unique per project): the user's
    usual name, the location and a random tail, within Hetzner's 64 characters."""
    tail = f"-{location}-{secrets.token_hex(3)}"
    return volume_name(cluster, user_id)[: NAME_MAX - len(tail)].rstrip("-._") + tail


async def crosses_locations(
    store: Store, user_id: str, server_id: str | None, location: str | None
) -> bool:
    """Whether a move names a location, or a server in another location than the
    user's volume (an ordinary move otherwise)."""
    if location is not None:
        return True
    if server_id is None:
        return False
    row = await store.fetch_one(
        "SELECT v.location AS here, s.location AS there FROM volumes v JOIN servers s "
        "ON s.id = ? WHERE v.user_id = ?",
        (server_id, user_id),
    )
    return row is not None and row["there"] is not None and row["here"] != row["there"]


async def start(
    store: Store,
    settings: Settings,
    placement: tuple[dict[str, Plan], Reserve, frozenset[str], RoomIndex | None],
    notify: Callable[..., None],
    user_id: str,
    server_id: str | None,
    location: str | None,
) -> str:
    """Starts the move; returns the target server."""
    if not settings.backups_enabled:
        raise Conflict(
            "a move to another location goes through a backup and a restore, and backups "
            "are off (BACKUP_S3_ENDPOINT is not set)",
            code="backups_off",
        )

    async def change(conn: aiosqlite.Connection) -> tuple[str, str]:
        user, volume = await _movable(conn, user_id, settings)
        plans, reserve, needs, index = placement
        source, chosen = await placing.start_relocation(
            conn, plans, reserve, user, server_id, location, needs, index
        )
        where = await fetch_one(conn, "SELECT location FROM servers WHERE id = ?", (chosen,))
        there = str(where["location"]) if where else str(location)
        name = new_volume_name(settings.cluster_name, user_id, there)
        now = time.time()
        await relocations.begin(conn, volume, source, chosen, there, name, now)
        await servers.bump_generation(conn, source)  # its set no longer carries the user
        return source, chosen

    source, chosen = await store.write(change)
    notify(source)
    return chosen


async def _movable(conn: aiosqlite.Connection, user_id: str, settings: Settings) -> tuple[Row, Row]:
    user = await fetch_one(
        conn,
        "SELECT u.*, v.location FROM users u "
        "LEFT JOIN volumes v ON v.user_id = u.id WHERE u.id = ?",
        (user_id,),
    )
    if user is None:
        raise NotFound(f"no user {user_id}")
    volume = await records.get(conn, user_id)
    if (
        not settings.user_volumes
        or volume is None
        or volume["state"] != "attached"
        or volume["server_id"] != user["server_id"]
    ):
        raise Conflict(
            f"{user_id} has no volume attached where it runs: nothing to move", code="no_volume"
        )
    if await relocations.get(conn, user_id) is not None:
        raise Conflict(f"{user_id} is already moving", code="move_in_progress")
    return user, volume
