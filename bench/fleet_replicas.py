"""bench/fleet.py's control planes: one on SQLite, or N replicas on one PostgreSQL database.

Contract:
- `Routed`: a worker's credentials with the replica it talks to, as behind a load
  balancer with sticky connections; `route(workers, urls)` deals the workers to the
  replicas in turn (their counts differ by one at most) and keeps their order;
  `register_routed(urls, token, n)` registers N workers, each through the replica
  `route` deals it to (worker i: replica i mod len(urls)).
- `Replica`: `python -m control` under bench/gc_probe.py (every collection timed into its
  own `gc.json`), on its own 127.0.0.1 port and its own directory for DATABASE_PATH's
  local files; `start_replicas(n, tmp, admin_token, internal_secret, extra)` starts N
  at once (migrations are safe with replicas starting at once), every one with the
  same settings but its port, and waits until each answers /healthz; on a failure it
  stops those it started. Each keeps its own address as PUBLIC_URL (one shared address
  would read as a proxy in front, and /metrics would then want a token; the workers
  are simulated, so what their specs name does not matter). `stop_replicas` ends
  them (SIGTERM: the probe writes its pauses on exit).
- `split_created(created, via, replica_of)`: the users created through one replica and
  placed on a worker whose long-poll another replica holds (the wake-up crossed
  replicas), apart from the others (pure).
- `cpu_snapshot(replicas)`: each replica's CPU seconds so far (None where unreadable).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.heartbeats import (
    HOST,
    RESOURCES,
    SETUP_CONCURRENCY,
    Credentials,
    control_env,
    cpu_seconds,
    free_port,
    register_worker,
    start_process,
    stop_process,
    wait_ready,
)

ROOT = Path(__file__).resolve().parent.parent
PROBE = str(ROOT / "bench" / "gc_probe.py")


@dataclass(frozen=True)
class Routed(Credentials):
    url: str


def route(workers: Sequence[Credentials], urls: Sequence[str]) -> list[Routed]:
    return [Routed(c.key_id, c.secret, urls[i % len(urls)]) for i, c in enumerate(workers)]


async def register_routed(urls: Sequence[str], admin_token: str, n: int) -> list[Routed]:
    sem = asyncio.Semaphore(SETUP_CONCURRENCY)
    connector = aiohttp.TCPConnector(limit=SETUP_CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> Routed:
            url = urls[i % len(urls)]
            async with sem:
                c = await register_worker(session, url, admin_token, f"bench-{i:05d}", RESOURCES)
            return Routed(c.key_id, c.secret, url)

        return list(await asyncio.gather(*(one(i) for i in range(n))))


@dataclass
class Replica:
    index: int
    url: str
    home: Path
    proc: subprocess.Popen[bytes]

    @property
    def gc_path(self) -> Path:
        return self.home / "gc.json"

    @property
    def log_path(self) -> Path:
        return self.home / "control.log"


def start_replicas(
    n: int, tmp: Path, admin_token: str, internal_secret: str, extra: Mapping[str, str]
) -> list[Replica]:
    """`extra`: settings every replica shares (DATABASE_URL on PostgreSQL)."""
    ports = [free_port() for _ in range(n)]
    replicas: list[Replica] = []
    try:
        for i, port in enumerate(ports):
            # One replica keeps bench/fleet.py's old layout: tmp/clawfleet.db.
            home = tmp if n == 1 else tmp / f"replica-{i}"
            home.mkdir(parents=True, exist_ok=True)
            env = control_env(home, port, admin_token, internal_secret) | dict(extra)
            proc = start_process(
                [sys.executable, PROBE, str(home / "gc.json")], env, home / "control.log"
            )
            replicas.append(Replica(i, f"http://{HOST}:{port}", home, proc))
        for r in replicas:
            asyncio.run(wait_ready(r.url, r.proc, r.log_path))
    except BaseException:
        stop_replicas(replicas)
        raise
    return replicas


def stop_replicas(replicas: Sequence[Replica]) -> None:
    for r in replicas:
        stop_process(r.proc)


def cpu_snapshot(replicas: Sequence[Replica]) -> list[float | None]:
    return [cpu_seconds(r.proc.pid) for r in replicas]


def split_created(
    created: Sequence[tuple[float, str]], via: Sequence[int], replica_of: Mapping[str, int]
) -> tuple[list[tuple[float, str]], list[tuple[float, str]]]:
    """(same replica, crossed): `via[i]` is the replica `created[i]` went through; a
    user placed on a worker that holds no routed long-poll counts as the same."""
    same: list[tuple[float, str]] = []
    crossed: list[tuple[float, str]] = []
    for (at, server), replica in zip(created, via, strict=True):
        (crossed if replica_of.get(server, replica) != replica else same).append((at, server))
    return same, crossed


async def leads(session: aiohttp.ClientSession, url: str) -> bool | None:
    """Whether this replica holds the leader lease (its /readyz `leader` check); None
    when it does not say."""
    try:
        async with session.get(url + "/readyz") as r:
            body: Any = await r.json(content_type=None)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        return None
    detail = (
        body.get("checks", {}).get("leader", {}).get("detail") if isinstance(body, dict) else None
    )
    return None if detail is None else str(detail).startswith("this replica leads")
