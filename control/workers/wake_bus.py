"""Long-poll wake-ups across replicas on PostgreSQL (issue 16).

Contract:
- The database says when a worker's set changed: a row trigger (`install`, idempotent,
  run under the migration lock each time the bus connects) notifies `CHANNEL` with the
  server's id whenever an UPDATE changes `servers.generation`. PostgreSQL delivers a
  notification only when its transaction commits, in commit order, so a rolled-back
  write wakes nobody, and every writer (any module, any replica, an operator's psql)
  is covered without calling anything. A payload is server ids separated by spaces
  (the trigger sends one per row; a listener reads any number), far below PostgreSQL's
  8000-byte limit; a transaction that bumps one server twice sends its id once.
- `WakeBus(url, board)`: the replica's one LISTEN connection, owned by the bus.
  `start()` returns once it listens (raising `StoreUnavailable` when the database
  cannot be reached). Each notification calls `board.notify(*ids)`: the writing
  replica's own come back too, and waking a waiter twice is harmless (it re-reads).
- A lost connection is opened again, at once and then with capped exponential backoff
  (shared/backoff.py, up to `MAX_BACKOFF`). Once it listens again, every local waiter
  is woken once (`GenerationBoard.wake_all`): notifications sent while it was away are
  lost, and a spurious wake costs the agent one read.
- `close()` stops listening and closes the connection; safe to call twice.
- `WakeBus(url, board, (channel, heard))`: the same session listens on `channel` too
  (the leader's nudges, control/api/agent_wakes.py) and calls `heard(payload)` for each
  notification there, and `heard(None)` each time it listens again after a loss: what
  was sent meanwhile is lost.
- SQLite has no bus: one process, and the in-process `notify` after commit suffices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

import psycopg

from control.db.postgres_conn import storage_failures
from control.db.postgres_schema import MIGRATE_LOCK
from control.workers.assignments import GenerationBoard
from shared.backoff import backoff_delay

log = logging.getLogger(__name__)

CHANNEL = "clawfleet_wake"
# How the LISTEN session shows in pg_stat_activity.
APPLICATION_NAME = "clawfleet-wake"
MAX_BACKOFF = 5.0

TRIGGER = (
    "CREATE OR REPLACE FUNCTION clawfleet_wake() RETURNS trigger LANGUAGE plpgsql AS $$ "
    f"BEGIN PERFORM pg_notify('{CHANNEL}', NEW.id); RETURN NULL; END $$",
    # UPDATE OF generation: heartbeats' UPDATEs (no generation in SET) never fire it.
    "CREATE OR REPLACE TRIGGER servers_wake AFTER UPDATE OF generation ON servers "
    "FOR EACH ROW WHEN (OLD.generation IS DISTINCT FROM NEW.generation) "
    "EXECUTE FUNCTION clawfleet_wake()",
)

Conn = psycopg.AsyncConnection[tuple[object, ...]]


async def install(conn: Conn) -> None:
    """The notifying trigger, (re)created in one transaction. The migration lock keeps
    replicas starting at once from replacing it concurrently (PostgreSQL refuses that)
    and from racing a migration that rebuilds `servers`."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
        for statement in TRIGGER:
            await conn.execute(statement)


class WakeBus:
    def __init__(
        self,
        url: str,
        board: GenerationBoard,
        other: tuple[str, Callable[[str | None], None]] | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.url = url
        self._board = board
        self._other = other
        self._rand = rand
        self._conn: Conn | None = None
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Condition()
        self.connections = 0  # LISTEN sessions opened so far

    async def start(self) -> None:
        with storage_failures():
            conn = await self._connect()
        self._task = asyncio.create_task(self._run(conn), name="wake-bus")

    async def _connect(self) -> Conn:
        conn = await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, application_name=APPLICATION_NAME
        )
        try:
            await install(conn)
            for channel in (CHANNEL, self._other[0]) if self._other else (CHANNEL,):
                await conn.execute(f"LISTEN {channel}")
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        # After LISTEN: a commit from now on reaches us, and what committed before is
        # what the woken waiters read.
        self._board.wake_all()
        async with self._listening:
            self.connections += 1
            self._listening.notify_all()
        return conn

    async def _run(self, conn: Conn | None) -> None:
        failures = 0
        while True:
            try:
                if conn is None:
                    conn = await self._connect()
                    log.warning("wake bus: listening again; every waiting long-poll re-reads")
                    failures = 0
                    if self._other:
                        self._other[1](None)
                async for note in conn.notifies():
                    if note.channel == CHANNEL:
                        self._board.notify(*note.payload.split())
                    elif self._other:
                        self._other[1](note.payload)
            except Exception as exc:
                # Whatever ended the session, the bus must not die: without it, this
                # replica's long-polls would sleep through other replicas' changes.
                if failures == 0:
                    log.warning("wake bus: LISTEN connection lost (%s); reconnecting", exc)
            finally:
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        await conn.close()
                conn = self._conn = None
            if failures:
                await asyncio.sleep(
                    backoff_delay(failures - 1, base=0.1, cap=MAX_BACKOFF, rand=self._rand())
                )
            failures += 1

    async def until_connected(self, count: int) -> None:
        """Returns once the bus has opened `count` LISTEN sessions (a test's wait)."""
        async with self._listening:
            await self._listening.wait_for(lambda: self.connections >= count)

    def backend_pid(self) -> int | None:
        """The LISTEN session's server process, while connected."""
        return self._conn.info.backend_pid if self._conn is not None else None

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
