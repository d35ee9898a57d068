"""The autoscaler: one run applies control/capacity/decisions.py's decisions through a
provider, step by step, and records every decision as an event.

Contract:
- `run(scheduled=...)` never overlaps itself (one lock) and never raises: each step
  catches its own provider errors, so one failing step does not stop the others; a
  step the database refuses (`ServiceUnavailable`: the store is down, or a fenced
  write of a replica that no longer leads, control/leadership/) ends the run there, so
  no later step calls the provider for work it could not record.
- On-demand runs coalesce: while a run is in progress, at most one more waits, and
  every further trigger joins that waiting run (a scheduled trigger makes it sweep
  for orphans, control/capacity/orphans.py and control/volumes/orphans.py).
- Every run first places pending users (a safety net for room no trigger saw), then
  repairs (control/capacity/lifecycle.py), drains, moves users' volumes
  (control/volumes/runner.py), asks for backups where volumes are mounted
  (control/volumes/backups.py) and scales
  (control/capacity/scale_up.py, scale_down.py). Creating and deleting at the
  provider, and the backoff per resource, are control/capacity/provisioning.py's.
- Until the provider is validated (`health.usable`), runs do only what needs no
  catalogue of server types: provisioning timeouts, deleting dead servers and drains.
  No create, no retry of an unconfirmed create, no scale-down.
- The scaler acts through the `Provisioner` given at construction, which holds the
  provider, the store and the user-data renderer (control/workers/bootstrap.py); the
  scaler never builds user data.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable

from control.capacity import lifecycle, orphans, scale_down, scale_up
from control.capacity.providers.base import ProviderError
from control.capacity.provisioning import Provisioner, ScalerState, said
from control.errors import ServiceUnavailable
from control.health import ProviderHealth
from control.users import placing
from control.volumes import backups as volume_backups
from control.volumes import orphans as volume_orphans
from control.volumes import runner as volumes
from control.workers import assignments

log = logging.getLogger(__name__)
Step = Callable[[Provisioner], Awaitable[None]]


class Scaler:
    def __init__(self, provisioner: Provisioner, health: ProviderHealth | None = None) -> None:
        self.provisioner = provisioner
        self.health = health or ProviderHealth(state="ok", detail="")
        self._lock = asyncio.Lock()
        self._queued: asyncio.Future[None] | None = None  # the run waiting behind this one
        self._sweep_wanted = False

    @property
    def state(self) -> ScalerState:
        return self.provisioner.state

    @property
    def max_servers(self) -> int:
        return self.provisioner.max_servers

    async def stopped(self) -> None:
        """Waits for a run in progress (cancelled at shutdown) to finish unwinding."""
        async with self._lock:
            return

    async def tick(self, scheduled: bool) -> None:
        """The scheduler's entry point: a run cut short by shutdown is not an error."""
        with contextlib.suppress(asyncio.CancelledError):
            await self.run(scheduled)

    async def run(self, scheduled: bool = True) -> None:
        """Runs now, or joins the run already waiting behind the one in progress."""
        self._sweep_wanted = self._sweep_wanted or scheduled
        if self._queued is not None:
            await asyncio.shield(self._queued)
            return
        queued = self._queued = asyncio.get_running_loop().create_future()
        try:
            async with self._lock:
                self._queued = None
                sweep, self._sweep_wanted = self._sweep_wanted, False
                await self._run_steps(sweep)
        finally:
            if self._queued is queued:
                self._queued = None
            if not queued.done():
                queued.set_result(None)

    def _steps(self) -> list[Step]:
        # Placement first, every run: a safety net for any room a trigger missed.
        if not self.health.usable:  # creates need the validated catalogue; deletes do not
            return [
                _place_pending,
                lifecycle.expire_provisioning,
                lifecycle.delete_dead,
                scale_down.drain,
                volumes.run,  # volumes need no catalogue of server types
                volume_backups.run,
            ]
        return [
            _place_pending,
            lifecycle.expire_provisioning,
            lifecycle.delete_dead,
            lifecycle.retry_unconfirmed,
            scale_down.drain,
            volumes.run,  # after the drain: a user it moves has its volume follow at once
            volume_backups.run,  # after the volume step: jobs go where volumes are now
            scale_up.scale_up,
            scale_down.scale_down,
        ]

    async def _run_steps(self, sweep: bool) -> None:
        self.state.runs += 1
        for step in self._steps():
            try:
                await step(self.provisioner)
            except ProviderError as exc:
                log.warning(
                    "autoscaler step %s: %s; the next run retries", step.__name__, said(exc)
                )
            except ServiceUnavailable as exc:
                # The database refused (down, or this replica's lease is gone: a fenced
                # write). Later steps would call the provider and then fail to record
                # what they did: end the run here.
                log.warning("autoscaler run stopped at %s: %s", step.__name__, exc)
                return
            except Exception as exc:
                # Last resort, on purpose: one broken step must not stop the others nor the
                # scheduled runs; one line, and the next run retries.
                log.error(
                    "autoscaler step %s failed (%s: %s); the next run retries",
                    step.__name__,
                    type(exc).__name__,
                    exc,
                )
        if sweep:
            try:
                await orphans.sweep(self.provisioner)
                await volume_orphans.sweep(self.provisioner)
            except Exception as exc:
                # Last resort, on purpose: the sweep only counts and reports; a failure
                # keeps the last counts and must not fail the run. One line.
                log.error("orphan sweep failed (%s: %s); counts kept", type(exc).__name__, exc)


async def _place_pending(p: Provisioner) -> None:
    change = functools.partial(
        placing.place_pending,
        plans=p.settings.plans,
        reserve=p.reserve,
        needs=p.needs,
        index=p.room_index,
    )
    result = await assignments.commit(p.store, change, lambda r: r.placed.values())
    p.notify(*result.touched_servers)
