"""Waking held long-polls (control/app.py wires it): across replicas, and at shutdown.

Contract:
- `start_wake_bus(app, board)`: on PostgreSQL (DATABASE_URL), the replica's wake bus
  (control/workers/wake_bus.py) is started and kept under `WAKE_BUS`: every replica's
  change wakes this replica's long-polls. On SQLite nothing: one process, whose own
  `notify` after commit suffices.
- `wake_long_polls(app)` (on shutdown, and again as the Fleet's context unwinds: safe
  twice): the wake bus closes first, since nothing may wake a closed board, then the
  board closes, which answers every held long-poll at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from control.appkeys import FLEET, SETTINGS
from control.workers.assignments import GenerationBoard

if TYPE_CHECKING:  # imported when used: SQLite has no need of PostgreSQL's driver
    from control.workers.wake_bus import WakeBus

WAKE_BUS: web.AppKey[WakeBus] = web.AppKey("wake_bus")


async def start_wake_bus(app: web.Application, board: GenerationBoard) -> None:
    url = app[SETTINGS].database_url
    if url:
        from control.workers.wake_bus import WakeBus

        bus = app[WAKE_BUS] = WakeBus(url, board)
        await bus.start()


async def wake_long_polls(app: web.Application) -> None:
    if WAKE_BUS in app:
        await app[WAKE_BUS].close()
    if FLEET in app:
        app[FLEET].board.close()
