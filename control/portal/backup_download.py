"""A customer's backups on their page (docs/portal.md, "Downloading a backup"): the
list of their agent's snapshots and a tar archive of one, streamed by the control
plane (control/portal/backup_download_stream.py).

Contract: both routes are reads: a portal session (401 `signed_out`), no CSRF token
(the session cookie is SameSite=Strict, so a cross-site page cannot send it), and
`owned` on `{user_id}` (404 alike for another customer's agent and none at all).
- `GET /portal/api/account/agents/{user_id}/backups`: `{"backups_enabled", "snapshots":
  [{"id", "at", "bytes_added"}]}`, newest first: the user's done snapshot jobs restic
  still holds (those a later snapshot's retention forgot are not listed), as the
  admin's list; none with BACKUP_S3_ENDPOINT unset (the page then shows no Backups
  section).
- `GET .../backups/{snapshot_id}/download`: 409 `backups_off` with BACKUP_S3_ENDPOINT
  unset; else the snapshot's files as a tar archive,
  `<user id>-<UTC time>-<snapshot id>.tar`. Only a snapshot listed for that very user:
  400 `unknown_snapshot` (malformed, another user's, never listed) or
  `snapshot_forgotten`, before restic runs; then the limits (one download per
  customer, `Downloads.cap` at once: 429 with Retry-After).
`backup_download_routes(app)` puts the `Downloads` under `DOWNLOADS` and returns the
routes; install.py adds them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from aiohttp import web

from control.appkeys import FLEET
from control.backups.repository import repository_url
from control.clock import iso
from control.errors import BadRequest, Conflict
from control.portal.backup_download_stream import Download, Downloads, stream
from control.portal.customers import customer, owned

DOWNLOADS: web.AppKey[Downloads] = web.AppKey("portal_backup_downloads")
_BACKUPS = "/portal/api/account/agents/{user_id}/backups"
_SNAPSHOT_ID = re.compile(r"[0-9a-f]{8,64}")
MAX_LISTED = 500  # as many as a report can say the repository kept

routes = web.RouteTableDef()


def backup_download_routes(app: web.Application) -> web.RouteTableDef:
    app[DOWNLOADS] = Downloads()
    return routes


@routes.get(_BACKUPS)
async def list_backups(request: web.Request) -> web.Response:
    user_id = await owned(request, await customer(request), request.match_info["user_id"])
    if not request.app[FLEET].settings.backups_enabled:
        return web.json_response({"backups_enabled": False, "snapshots": []})
    rows = await request.app[FLEET].store.fetch_all(
        "SELECT result_snapshot_id, finished_at, bytes_added FROM backup_jobs "
        "WHERE user_id = ? AND kind = 'snapshot' AND state = 'done' "
        "AND result_snapshot_id IS NOT NULL ORDER BY finished_at DESC, id LIMIT ?",
        (user_id, MAX_LISTED),
    )
    snapshots = [
        {
            "id": r["result_snapshot_id"],
            "at": iso(r["finished_at"]),
            "bytes_added": r["bytes_added"],
        }
        for r in rows
    ]
    return web.json_response({"backups_enabled": True, "snapshots": snapshots})


async def listed_at(request: web.Request, user_id: str, snapshot_id: str) -> float:
    """When the user's listed snapshot `snapshot_id` finished; 400 for any other id."""
    unknown = BadRequest("not a backup of this agent", code="unknown_snapshot")
    if not _SNAPSHOT_ID.fullmatch(snapshot_id):
        raise unknown
    row = await request.app[FLEET].store.fetch_one(
        "SELECT MAX(CASE WHEN result_snapshot_id = ? THEN finished_at END) AS at, "
        "MAX(snapshot_id = ?) AS forgotten FROM backup_jobs "
        "WHERE user_id = ? AND kind = 'snapshot' AND state = 'done'",
        (snapshot_id, snapshot_id, user_id),
    )
    if row is not None and row["at"] is not None:
        return float(row["at"])
    if row is not None and row["forgotten"]:
        raise BadRequest(
            "this backup is too old: it has been deleted as planned", code="snapshot_forgotten"
        )
    raise unknown


@routes.get(_BACKUPS + "/{snapshot_id}/download", allow_head=False)  # HEAD would run restic
async def download(request: web.Request) -> web.StreamResponse:
    who = await customer(request)
    user_id = await owned(request, who, request.match_info["user_id"])
    if not request.app[FLEET].settings.backups_enabled:
        raise Conflict("backups are not offered here", code="backups_off")
    snapshot_id = request.match_info["snapshot_id"]
    at = await listed_at(request, user_id, snapshot_id)
    settings, keyring = request.app[FLEET].settings, request.app[FLEET].keyring
    stamp = datetime.fromtimestamp(at, UTC).strftime("%Y%m%d-%H%M%S")
    wanted = Download(
        url=repository_url(
            settings.backup_s3_endpoint, settings.backup_s3_bucket, settings.cluster_name, user_id
        ),
        snapshot_id=snapshot_id,
        filename=f"{user_id}-{stamp}-{snapshot_id}.tar",
        password=keyring.backup_password(user_id),
        access_key=settings.backup_s3_access_key,
        secret_key=settings.backup_s3_secret_key,
    )
    limits = request.app[DOWNLOADS]
    async with limits.slot(who.email):
        return await stream(request, wanted, limits)
