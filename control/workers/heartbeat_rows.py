"""What a heartbeat writes to its worker's row, and whether that needs the write lock.

Contract:
- `needs_lock(hb, row, becoming_running)` is the pure rule: a heartbeat whose worker is
  `active` and that changes none of what placement and the other writes under the
  write lock read (the worker's status, trusted CPUs and memory, features, overclaim;
  a user of it becoming running; a backup job's report) is plain, and is recorded
  outside the lock (control/workers/heartbeats.py, control/db/postgres.py
  `write_apart`). A refused heartbeat (unknown or revoked worker) writes nothing, so
  needs nothing. `row` is the worker's row as `ROW_SQL` reads it.
- `full_row` is a heartbeat's row for `servers.record_heartbeats`, `plain_row` for
  `servers.record_plain_heartbeats`. Both store the claim clamped to what the control
  plane knows of the worker (control/workers/trust.py), never more.
"""

from __future__ import annotations

import msgspec

from control.db.store import Row
from control.users import features
from control.workers import trust
from control.workers.auth import REVOKED_STATUSES
from shared.protocol import Heartbeat

ROW_SQL = f"SELECT id, status, generation, features, {trust.CEILING_SQL} FROM servers"


def needs_lock(hb: Heartbeat, row: Row | None, becoming_running: bool) -> bool:
    if row is None or row["status"] in REVOKED_STATUSES:
        return False
    if row["status"] != "active" or becoming_running or hb.backups:
        return True
    trusted, overclaim = trust.trust(claim(hb), trust.ceiling_of(row))
    return (
        bool(overclaim)
        or features.stored(hb.features) != row["features"]
        or (trusted.cpus, trusted.memory_mb) != (row["cpus"], row["memory_mb"])
    )


def claim(hb: Heartbeat) -> trust.Capacity:
    res = hb.resources
    return trust.Capacity(res.cpus, res.memory_mb, res.disk_gb)


def full_row(
    hb: Heartbeat, worker_id: str, interval: float, row: Row, now: float
) -> tuple[object, ...]:
    # What placement counts on is what we know the worker has, never more.
    trusted, _ = trust.trust(claim(hb), trust.ceiling_of(row))
    return (
        now,
        hb.agent_version,
        features.stored(hb.features),
        hb.applied_generation,
        trusted.cpus,
        trusted.memory_mb,
        trusted.disk_gb,
        _report(hb),
        interval,
        now,
        worker_id,
    )


def plain_row(
    hb: Heartbeat, worker_id: str, interval: float, row: Row, now: float
) -> tuple[object, ...]:
    trusted, _ = trust.trust(claim(hb), trust.ceiling_of(row))
    return (
        now,
        hb.agent_version,
        hb.applied_generation,
        trusted.disk_gb,
        _report(hb),
        interval,
        worker_id,
    )


def _report(hb: Heartbeat) -> str:
    return msgspec.json.encode(
        {
            "containers": hb.containers,
            "host": hb.host,
            "resources": hb.resources,
            # Block volumes' mounts (issue 13): control/volumes/runner.py reads them.
            "volumes": hb.volumes,
        }
    ).decode()
