"""The admin API of users' backups (docs/backups.md): list, snapshot now, restore.

Contract (admin token or dashboard session, as every /v1 admin route):
- `GET /v1/users/{id}/backups`: whether backups are on, the user's snapshots (its done
  snapshot jobs restic still holds, newest first: those a later snapshot's retention
  forgot are not listed, their jobs say so) and its RECENT_JOBS latest jobs.
- `POST /v1/users/{id}/backups`: a snapshot now, 202 with the job.
- `POST /v1/users/{id}/restore` `{"snapshot_id": ...}`: a restore of one of the user's
  snapshots, 202 with the job; the user's container stays stopped until it is done.
An unknown user is 404; 409 when backups are off, the user's volume is not attached and
mounted, or a job of the user is still open; 400 for a snapshot id that is not one of
the user's (control/volumes/backups.py `request`; `snapshot_forgotten` for one the
retention forgot).
- `POST /v1/users/{id}/backups/waive-final` `{"reason": ...}`: lets a cancelled user's
  volume be deleted at retention end without the final snapshot it waits for (one that
  can never be taken), recorded with an event; 201 with the waiver's id
  (control/volumes/final_waiver.py: 404 without a volume, 409 for a user not cancelled,
  a job still open or backups off). It works for a purged user too (no user row).
- `POST /v1/users/{id}/recover` `{"snapshot_id": ...}`: the user's volume is lost at the
  provider; the snapshot is restored onto a new volume, then the user starts on it.
  `POST /v1/users/{id}/recover-empty` `{"accept_data_loss": <the user id>, "reason": ...}`:
  the explicit choice to start it on an EMPTY new volume. Both 202 with the user's view
  (its `move` shows the recovery's phase); 409 `volume_exists` while the provider still
  lists the volume, and the other refusals of control/volumes/recover.py.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from aiohttp import web

from control.api import views
from control.api.bodies import decode_body
from control.appkeys import FLEET, SCALER
from control.backup_jobs.records import COLUMNS
from control.clock import iso
from control.db.store import Row, Store
from control.errors import NotFound
from control.fleet import Fleet
from control.volumes import backups, final_waiver, recover

backup_routes = web.RouteTableDef()
RECENT_JOBS = 20


class RestoreRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    snapshot_id: str


class RecoverRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    snapshot_id: str


class EmptyRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    accept_data_loss: str
    reason: str


class WaiveRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reason: str


def job_view(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "kind": row["kind"],
        "reason": row["reason"],
        "state": row["state"],
        "server_id": row["server_id"],
        "snapshot_id": row["result_snapshot_id"] or row["snapshot_id"],
        "bytes_added": row["bytes_added"],
        "attempts": row["attempts"],
        "error": row["error"],
        "created_at": iso(row["created_at"]),
        "finished_at": iso(row["finished_at"]),
        "retry_after": iso(row["retry_after"]),
    }


async def user_backups(store: Store, user_id: str) -> dict[str, list[dict[str, Any]]]:
    snapshots = await store.fetch_all(
        "SELECT result_snapshot_id, finished_at, bytes_added, reason FROM backup_jobs "
        "WHERE user_id = ? AND kind = 'snapshot' AND state = 'done' "
        "AND result_snapshot_id IS NOT NULL ORDER BY finished_at DESC, id",
        (user_id,),
    )
    jobs = await store.fetch_all(
        f"SELECT {COLUMNS} FROM backup_jobs WHERE user_id = ? ORDER BY created_at DESC, id LIMIT ?",
        (user_id, RECENT_JOBS),
    )
    return {
        "snapshots": [
            {
                "id": r["result_snapshot_id"],
                "at": iso(r["finished_at"]),
                "bytes_added": r["bytes_added"],
                "reason": r["reason"],
            }
            for r in snapshots
        ],
        "jobs": [job_view(r) for r in jobs],
    }


async def _known(fleet: Fleet, user_id: str) -> None:
    if await fleet.store.fetch_one("SELECT id FROM users WHERE id = ?", (user_id,)) is None:
        raise NotFound(f"no user {user_id}")


@backup_routes.get("/v1/users/{user_id}/backups")
async def list_backups(request: web.Request) -> web.Response:
    fleet, user_id = request.app[FLEET], request.match_info["user_id"]
    await _known(fleet, user_id)
    found = await user_backups(fleet.store, user_id)
    enabled = fleet.settings.backups_enabled
    return web.json_response({"user_id": user_id, "backups_enabled": enabled, **found})


async def _job_reply(fleet: Fleet, job_id: str) -> web.Response:
    row = await fleet.store.fetch_one(f"SELECT {COLUMNS} FROM backup_jobs WHERE id = ?", (job_id,))
    assert row is not None  # just created
    return web.json_response({"job": job_view(row)}, status=202)


@backup_routes.post("/v1/users/{user_id}/backups")
async def snapshot_now(request: web.Request) -> web.Response:
    fleet, user_id = request.app[FLEET], request.match_info["user_id"]
    await _known(fleet, user_id)
    job_id = await backups.request(
        fleet.store, fleet.settings, fleet.board.notify, user_id, None, time.time()
    )
    return await _job_reply(fleet, job_id)


@backup_routes.post("/v1/users/{user_id}/restore")
async def restore(request: web.Request) -> web.Response:
    fleet, user_id = request.app[FLEET], request.match_info["user_id"]
    req = decode_body(await request.read(), RestoreRequest)
    await _known(fleet, user_id)
    job_id = await backups.request(
        fleet.store, fleet.settings, fleet.board.notify, user_id, req.snapshot_id, time.time()
    )
    return await _job_reply(fleet, job_id)


@backup_routes.post("/v1/users/{user_id}/backups/waive-final")
async def waive_final(request: web.Request) -> web.Response:
    fleet, user_id = request.app[FLEET], request.match_info["user_id"]
    req = decode_body(await request.read(), WaiveRequest)
    waiver = await final_waiver.waive(fleet.store, fleet.settings, user_id, req.reason, time.time())
    return web.json_response({"user_id": user_id, "waiver": waiver}, status=201)


@backup_routes.post("/v1/users/{user_id}/recover")
async def recover_volume(request: web.Request) -> web.Response:
    fleet, user_id = request.app[FLEET], request.match_info["user_id"]
    req = decode_body(await request.read(), RecoverRequest)
    await recover.from_snapshot(request.app[SCALER].provisioner, user_id, req.snapshot_id)
    return web.json_response((await views.users(fleet, user_id))[0], status=202)


@backup_routes.post("/v1/users/{user_id}/recover-empty")
async def recover_empty(request: web.Request) -> web.Response:
    fleet, user_id = request.app[FLEET], request.match_info["user_id"]
    req = decode_body(await request.read(), EmptyRequest)
    await recover.empty(request.app[SCALER].provisioner, user_id, req.accept_data_loss, req.reason)
    return web.json_response((await views.users(fleet, user_id))[0], status=202)
