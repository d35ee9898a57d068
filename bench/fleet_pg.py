"""bench/fleet.py's database side: the workers it writes into the database, on SQLite or
PostgreSQL, and a throwaway PostgreSQL cluster whose CPU it measures.

Contract:
- `insert_workers(database, internal_secret, n)`: N active workers written straight into
  the database, a SQLite file's path or a `postgresql://` URL (the statement is SQLite's,
  translated by the store's own dialect, control/db/dialect.py), as bench/heartbeats.py
  `insert_workers` does on SQLite: they declare this agent's features, the size
  registration would record, and share one secret. Returns their credentials.
- `Cluster.start()`: a fresh cluster (tests/postgres_server.py: Debian's initdb, on
  127.0.0.1, fsync off) and a fresh database in it (`url`); `stop()` removes it, safe
  to call twice. `cpu_seconds()` is the CPU time (user + system) its processes have
  used so far: the postmaster, every live descendant, and the exited backends the
  postmaster reaped; None when the postmaster cannot be read.
- `tree_cpu(stats, root)`: that sum over a process table (pure).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import psycopg

from agent.features import FEATURES
from bench.heartbeats import RESOURCES, Credentials
from control.db import dialect
from control.keyring import Keyring
from control.users import features
from tests.postgres_server import PostgresServer, binaries

# bench/heartbeats.py insert_workers' statement, which the SQLite-only bench keeps.
INSERT_WORKER = (
    "INSERT INTO servers (id, name, status, origin, created_at, status_changed_at, "
    "registered_at, last_heartbeat, secret_ciphertext, generation, features, "
    "known_cpus, known_memory_mb, known_disk_gb) "
    "VALUES (?, ?, 'active', 'join', ?, ?, ?, ?, ?, 1, ?, ?, ?, ?)"
)


def insert_workers(database: str, internal_secret: str, n: int) -> list[Credentials]:
    secret = secrets.token_urlsafe(32)
    ciphertext = Keyring(internal_secret).encrypt(secret)
    now = time.time()
    ids = [f"srv-bench{i:06d}" for i in range(n)]
    # What registration records as the worker's stated size: the heartbeats' claims
    # are held to it (control/workers/trust.py).
    known = (RESOURCES["cpus"], RESOURCES["memory_mb"], RESOURCES["disk_gb"])
    stored = features.stored(FEATURES)
    rows = [(i, i, now, now, now, now, ciphertext, stored, *known) for i in ids]
    if database.startswith(("postgresql://", "postgres://")):
        with contextlib.closing(psycopg.connect(database)) as conn, conn.transaction():
            conn.cursor().executemany(dialect.statement(INSERT_WORKER), rows)
    else:
        with contextlib.closing(sqlite3.connect(database, timeout=30)) as db, db:
            db.executemany(INSERT_WORKER, rows)
    return [Credentials(i, secret) for i in ids]


class ProcStat(NamedTuple):
    ppid: int
    own: float  # utime + stime, seconds
    reaped: float  # cutime + cstime: children that exited and were waited for


def tree_cpu(stats: Mapping[int, ProcStat], root: int) -> float | None:
    """CPU seconds of `root` and all its descendants, with what each reaped: a backend
    that exits moves its time into its parent's `reaped`, so the sum only grows."""
    if root not in stats:
        return None
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        children.setdefault(stat.ppid, []).append(pid)
    total, todo, seen = 0.0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += stats[pid].own + stats[pid].reaped
        todo.extend(children.get(pid, []))
    return total


def process_table() -> dict[int, ProcStat]:
    """Every process's ProcStat from /proc (Linux); those that vanish while read are left out."""
    tick = os.sysconf("SC_CLK_TCK")
    table: dict[int, ProcStat] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            own = (int(fields[11]) + int(fields[12])) / tick
            reaped = (int(fields[13]) + int(fields[14])) / tick
            table[int(entry.name)] = ProcStat(int(fields[1]), own, reaped)
    return table


class Cluster:
    """A throwaway PostgreSQL cluster and one fresh database in it."""

    def __init__(self) -> None:
        bindir = binaries()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (/usr/lib/postgresql/*/bin)")
        self.server = PostgresServer(bindir)
        self.url = ""

    def start(self) -> None:
        try:
            self.server.start()
            self.url = self.server.new_database()
        except BaseException:
            self.stop()
            raise

    def postmaster(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.server.data / "postmaster.pid").read_text().split()[0])
        return None

    def cpu_seconds(self) -> float | None:
        pid = self.postmaster()
        return None if pid is None else tree_cpu(process_table(), pid)

    def stop(self) -> None:
        self.server.stop()
