"""A singleton job asked of the leader by any replica (issue 16).

A replica that sees the need for a singleton job now runs it itself only while it leads
(control/singleton_jobs.py). A follower that leaves a user pending (a payment or an
operator's request that reached it) tells the leader through PostgreSQL's NOTIFY on
`CHANNEL` instead, so that the customer does not wait for the leader's next scheduled
autoscaler run (AUTOSCALE_INTERVAL) for a server. The leader hears it on its wake bus
(control/workers/wake_bus.py). A DNS round needs no nudge: every assignment change bumps
a server's generation, whose NOTIFY reaches the leader's board, which asks for a round
itself; a firewall round asked at start-up is the asking replica's own business.

Contract:
- `JOBS`: the job ids a nudge may name. `named(payload)` is the known ids in a
  notification's payload, each once, in order; anything else in it is ignored.
- `Nudger(send)`: `nudge(job_id)` returns at once. The ids go out space-separated in one
  `send(CHANNEL, payload)` on the nudger's own task; ids asked while a send is under way
  go out in the next send, after it. So the leader's run that a nudge causes starts
  after every change committed before `nudge` was called, and reads it.
- A send that fails is logged and dropped: the leader's scheduled round still comes,
  and a new leader runs every job at once (control/leadership/leadership.py `on_lead`).
- `close()` awaits a send under way; `nudge` does nothing after it. Safe twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

CHANNEL = "clawfleet_nudge"
JOBS = ("autoscale-now",)

Send = Callable[[str, str], Awaitable[None]]


def named(payload: str) -> list[str]:
    words = set(payload.split())
    return [job for job in JOBS if job in words]


class Nudger:
    def __init__(self, send: Send) -> None:
        self._send = send
        self._asked: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.sent = 0  # notifications sent so far

    def nudge(self, job_id: str) -> None:
        if self._closed or job_id not in JOBS:
            return
        self._asked.add(job_id)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="leader-nudges")

    async def _drain(self) -> None:
        while self._asked:
            payload = " ".join(job for job in JOBS if job in self._asked)
            self._asked.clear()
            try:
                await self._send(CHANNEL, payload)
                self.sent += 1
            except Exception as exc:  # the scheduled round covers a lost nudge
                log.warning("nudge to the leader (%s) not sent: %s", payload, exc)

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
