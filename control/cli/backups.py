"""The backup commands of `clawfleet` (docs/backups.md): `backups USER` lists a user's
snapshots and recent jobs, `backup USER` asks for a snapshot now, `restore USER
SNAPSHOT` restores the user's volume to one of its snapshots; when the volume is lost
at the provider, `recover USER SNAPSHOT` restores a snapshot onto a new volume and
`recover-empty USER --accept-data-loss USER --reason TEXT` starts the user on an empty
one (control/volumes/recover.py); both print the user.

Contract: `run_backups(cmd, args, api)` makes the command's request and prints the
result (JSON with `--json`); the API's refusals (no volume, backups off, a job still
open: 409; a snapshot that is not the user's: 400; an unknown user: 404) are
`CliError`s with EXIT_API, their code and message printed, like every command's.
`backup` and `restore` return as soon as the job is asked for: `backups USER` shows
how it went.
"""

from __future__ import annotations

import argparse
import urllib.parse
from typing import Any

from control.cli.client import Api
from control.cli.render import render_user, show, table

BACKUP_COMMANDS = frozenset({"backups", "backup", "restore", "recover", "recover-empty"})
SNAPSHOT_HEADERS = ("SNAPSHOT", "AT", "BYTES ADDED", "REASON")
JOB_HEADERS = ("JOB", "KIND", "REASON", "STATE", "SNAPSHOT", "CREATED", "ERROR")


def _job_row(job: dict[str, Any]) -> list[object]:
    return [
        job["id"],
        job["kind"],
        job["reason"],
        job["state"],
        job.get("snapshot_id"),
        job.get("created_at"),
        job.get("error"),
    ]


def render_backups(body: dict[str, Any]) -> str:
    off = "" if body.get("backups_enabled") else "backups are off (BACKUP_S3_ENDPOINT)\n\n"
    snapshots = table(
        SNAPSHOT_HEADERS,
        [[s["id"], s["at"], s["bytes_added"], s["reason"]] for s in body["snapshots"]],
    )
    jobs = table(JOB_HEADERS, [_job_row(j) for j in body["jobs"]])
    return f"{off}{snapshots}\n\nrecent jobs:\n{jobs}"


def render_job(body: dict[str, Any]) -> str:
    job = body["job"]
    return f"{job['kind']} {job['id']} asked of {job['server_id']} ({job['state']})"


def run_backups(cmd: str, args: argparse.Namespace, api: Api) -> int:
    path = f"/v1/users/{urllib.parse.quote(args.user, safe='')}"
    if cmd == "backups":
        return show(args, api.call("GET", f"{path}/backups"), render_backups)
    if cmd == "backup":
        return show(args, api.call("POST", f"{path}/backups"), render_job)
    if cmd == "recover":
        body = api.call("POST", f"{path}/recover", {"snapshot_id": args.snapshot})
        return show(args, body, render_user)
    if cmd == "recover-empty":
        confirm = {"accept_data_loss": args.accept_data_loss, "reason": args.reason}
        return show(args, api.call("POST", f"{path}/recover-empty", confirm), render_user)
    body = api.call("POST", f"{path}/restore", {"snapshot_id": args.snapshot})
    return show(args, body, render_job)
