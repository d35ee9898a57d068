"""Waking held long-polls (control/app.py wires it): across replicas, and at shutdown;
and the leader's nudges, which travel the same way.

Contract:
- `start_wake_bus(app, board, nudged)`: on PostgreSQL (DATABASE_URL), the replica's wake
  bus (control/workers/wake_bus.py) is started and kept under `WAKE_BUS`: every
  replica's change wakes this replica's long-polls, and a nudge another replica sends
  calls `nudged(job_id)` for each job it names (for every job when the bus listens
  again after a loss). This replica's own nudges go out through the `Nudger` under
  `NUDGER` (control/leadership/nudges.py), on the store's connection. On SQLite
  nothing: one process, whose own `notify` after commit suffices, and which leads.
- `wake_long_polls(app)` (on shutdown, and again as the Fleet's context unwinds: safe
  twice): the wake bus closes first, since nothing may wake a closed board, then the
  board closes, which answers every held long-poll at once; the nudger's last send is
  awaited, before the store closes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from aiohttp import web

from control.appkeys import FLEET, SETTINGS, STORE
from control.leadership import nudges
from control.leadership.nudges import Nudger
from control.workers.assignments import GenerationBoard

if TYPE_CHECKING:  # imported when used: SQLite has no need of PostgreSQL's driver
    from control.db.postgres import PostgresStore
    from control.workers.wake_bus import WakeBus

WAKE_BUS: web.AppKey[WakeBus] = web.AppKey("wake_bus")
NUDGER: web.AppKey[Nudger] = web.AppKey("nudger")


async def start_wake_bus(
    app: web.Application, board: GenerationBoard, nudged: Callable[[str], None]
) -> None:
    url = app[SETTINGS].database_url
    if url:
        from control.workers.wake_bus import WakeBus

        def heard(payload: str | None) -> None:
            for job_id in nudges.JOBS if payload is None else nudges.named(payload):
                nudged(job_id)

        app[NUDGER] = Nudger(cast("PostgresStore", app[STORE]).notify)
        bus = app[WAKE_BUS] = WakeBus(url, board, (nudges.CHANNEL, heard))
        await bus.start()


async def wake_long_polls(app: web.Application) -> None:
    if WAKE_BUS in app:
        await app[WAKE_BUS].close()
    if NUDGER in app:
        await app[NUDGER].close()
    if FLEET in app:
        app[FLEET].board.close()
