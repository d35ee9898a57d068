"""What the admin API's pages, the fleet summary and /metrics cost with a big fleet in
the database (issue 16): 10k servers and 100k users by default.

The control plane runs as its own process (`python -m control`, the checkout's code, or
the code under `--code DIR`, e.g. an older commit unpacked with `git archive`, to
measure before and after). Once it has migrated its database, the fleet is written
straight into SQLite: servers active with a fresh heartbeat and a report holding their
users' containers (so every page parses real reports), users running on them, a few
pending. Then each path is read `--reps` times, one request at a time, and its median
and worst time and reply size printed; the last line is one JSON object of them all.
Paths the code does not serve (before pagination) say so instead of a time; before
pagination every listing path answers the whole table, whatever its query.

    .venv/bin/python bench/admin_pages.py [--servers 10000] [--users 100000] [--reps 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.heartbeats import (  # noqa: E402
    HOST,
    control_env,
    free_port,
    stop_process,
    wait_ready,
)

PENDING = 100  # users waiting for room besides them (the servers are full)


def container(user_id: str) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "state": "running",
        "health": "healthy",
        "image_id": "sha256:" + "ab" * 32,
        "started_at": "2026-11-20T10:00:00Z",
        "restart_count": 0,
        "error": None,
    }


def fill(db_path: str, n_servers: int, n_users: int) -> None:
    """The fleet, written as the control plane would have it after a while."""
    now, per = time.time(), n_users // n_servers
    servers, users = [], []
    for i in range(n_servers):
        sid = f"srv-{i:06d}"
        mine = [f"user-{i * per + k:07d}" for k in range(per)]
        report = {"containers": [container(u) for u in mine], "host": {"docker_version": "26"}}
        age = (i % 40) * 0.5  # a spread of heartbeat ages for the histogram
        # id, name, created_at, status_changed_at, registered_at, last_heartbeat, report
        servers.append(
            (sid, sid, now - 3600, now - 3600, now - 3600, now - age, json.dumps(report))
        )
        users += [(u, u, "running", sid, now - 3000, now) for u in mine]
    users += [(f"wait-{i:04d}", f"wait-{i:04d}", "pending", None, now, now) for i in range(PENDING)]
    with sqlite3.connect(db_path, timeout=60) as db:
        db.executemany(
            "INSERT INTO servers (id, name, status, origin, created_at, status_changed_at, "
            "registered_at, last_heartbeat, report, generation, applied_generation, cpus, "
            "memory_mb, disk_gb, heartbeat_interval, features) "
            "VALUES (?, ?, 'active', 'join', ?, ?, ?, ?, ?, 1, 1, 16, ?, 320, 5, '')",
            # Full (the default plan's 1 GB each and the 512 MB reserve), and declaring no
            # agent features: nothing the bench does not write is placed meanwhile.
            [(*s, per * 1024 + 512) for s in servers],
        )
        db.executemany(
            "INSERT INTO users (id, subdomain, plan, state, server_id, created_at, updated_at) "
            "VALUES (?, ?, 'default', ?, ?, ?, ?)",
            users,
        )


async def timed(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], reps: int
) -> dict[str, Any]:
    times, size, status = [], 0, 0
    for _ in range(reps):
        t0 = time.perf_counter()
        async with session.get(url, headers=headers) as r:
            body = await r.read()
            status = r.status
        times.append((time.perf_counter() - t0) * 1000)
        size = len(body)
        if status != 200:
            return {"status": status}
    return {
        "median_ms": round(statistics.median(times), 1),
        "max_ms": round(max(times), 1),
        "bytes": size,
    }


async def cursor_at(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], pages: int
) -> str | None:
    """The cursor of page `pages + 1` of a listing (None: the code has no cursors)."""
    cursor = None
    for _ in range(pages):
        sep = "&" if "?" in url else "?"
        page_url = url + (f"{sep}cursor={cursor}" if cursor else "")
        async with session.get(page_url, headers=headers) as r:
            body = await r.json()
        cursor = body.get("next_cursor")
        if not cursor:
            return None
    return cursor


async def measure(url: str, token: str, reps: int, whole_reps: int) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {token}"}
    figures: dict[str, Any] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
        users_mid = await cursor_at(s, url + "/v1/users?limit=100", auth, 500)
        servers_mid = await cursor_at(s, url + "/v1/servers?limit=100", auth, 50)
        paths = {
            "GET /v1/servers": ("/v1/servers", whole_reps),
            "GET /v1/users": ("/v1/users", whole_reps),
            "GET /v1/servers?limit=500": ("/v1/servers?limit=500", reps),
            "GET /v1/users?limit=500": ("/v1/users?limit=500", reps),
            "GET /v1/users?state=pending": ("/v1/users?state=pending", reps),
            "GET /v1/users?server=srv-005000": ("/v1/users?server=srv-005000", reps),
            "GET /v1/summary": ("/v1/summary", reps),
            # What an open dashboard's fleet page reads besides the summary, every poll.
            "GET /v1/servers?limit=50&status=(all but deleted)": (
                "/v1/servers?limit=50&status=provisioning,active,unhealthy,dead,deleting",
                reps,
            ),
            "GET /v1/users?state=pending&limit=50": ("/v1/users?state=pending&limit=50", reps),
            "GET /metrics": ("/metrics", reps),
        }
        if servers_mid:
            paths["GET /v1/servers, page 51"] = (f"/v1/servers?cursor={servers_mid}", reps)
        if users_mid:
            paths["GET /v1/users, page 501"] = (f"/v1/users?cursor={users_mid}", reps)
        for name, (path, n) in paths.items():
            figures[name] = await timed(s, url + path, auth, n)
            print(f"{name}: {json.dumps(figures[name])}", flush=True)
    return figures


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    token, port = secrets.token_urlsafe(32), free_port()
    url = f"http://{HOST}:{port}"
    db_path = str(tmp / "clawfleet.db")
    # The inserted heartbeats must not go stale while the pages are read.
    env = control_env(tmp, port, token, secrets.token_urlsafe(32)) | {"DEAD_AFTER": "3600"}
    log_path = tmp / "control.log"
    # `-m` puts the working directory first on sys.path: run from the tree measured.
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "control"],
            cwd=args.code or ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        asyncio.run(wait_ready(url, proc, log_path))
        t0 = time.monotonic()
        fill(db_path, args.servers, args.users)
        print(f"wrote {args.servers} servers, {args.users} users in {time.monotonic() - t0:.1f}s")
        return asyncio.run(measure(url, token, args.reps, args.whole_reps))
    finally:
        stop_process(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=20, help="reads of each page")
    parser.add_argument(
        "--whole-reps", type=int, default=3, help="reads of the unpaged listings (slow before)"
    )
    parser.add_argument("--code", help="run the control plane from this tree instead")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="clawfleet-admin-bench-") as tmp:
        figures = run(args, Path(tmp))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
