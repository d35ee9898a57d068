"""`Leadership`: holds the singletons' lease for this replica and runs the singletons
only while it does.

Contract:
- `guard(job)` wraps a singleton job (a scheduler's, control/app.py): while this replica
  leads, a call runs the job as a task under the term (fencing.py `TERM`) and waits for
  it; while it does not (no term, or the lease lapsed by this replica's clock: `leads`),
  the call returns at once and the job does not run (`refused` counts those).
  `add_loop(name, factory)` names a singleton loop (the liveness sweeps), started as a
  task under the term whenever leadership is gained.
- `holder` is this process's id in the lease (random unless given: control/app.py gives
  SQLite's one process per database a stable one).
- `start(store)` installs the fence on the store, makes the first attempt before
  returning (on a database nobody leads, the caller leads from start-up: singletons
  start as they did without a lease) and then keeps deciding in the background
  (decide.py: renew a third of the TTL apart; when following, look again as often).
- Losing: a renewal that fails (the store refuses, or no answer before the lease would
  lapse), another holder seen, or a fenced write refused (which wakes the loop): the
  term ends at once, every singleton task is cancelled and awaited before anything else
  happens, and `guard` refuses from that moment. A new term (gained, or a new epoch)
  starts the loops again and calls the `on_lead` callbacks (the app asks for an
  autoscaler run and DNS and firewall rounds at once).
- `stop()` ends the background loop and the term (awaiting the singletons) and releases
  the lease, so that another replica takes over at its next look.
- `status()` says who leads, with which epoch, until when; `changed` is set on every
  change of term and `decided` after every attempt (tests clear and await them).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

import aiosqlite

from control.db.store import CommitHook
from control.errors import ClawfleetError
from control.leadership import lease
from control.leadership.decide import Lease, renew_every
from control.leadership.fencing import TERM, Term, fence

log = logging.getLogger(__name__)
T = TypeVar("T")
LEASE = "singletons"
Loop = Callable[[], Coroutine[Any, Any, None]]
Job = Callable[..., Coroutine[Any, Any, None]]


class LeaseStore(Protocol):
    """What leadership needs of a store (control/db/store.py or postgres.py)."""

    def add_commit_hook(self, hook: CommitHook) -> None: ...
    async def write(self, fn: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T: ...
    async def fetch_one(self, sql: str, params: Any = ()) -> Any: ...


class Leadership:
    def __init__(
        self, ttl: float, *, clock: Callable[[], float] = time.time, holder: str | None = None
    ) -> None:
        self.ttl = ttl
        self.holder = holder or secrets.token_hex(8)
        self.term: Term | None = None  # set while this replica leads
        self.seen: Lease | None = None  # the row as last read or written
        self.attempts = 0
        self.refused = 0  # singleton calls refused while not leading
        self.changed = asyncio.Event()  # set on every change of term
        self.decided = asyncio.Event()  # set after every decision (or failed attempt)
        self.on_lead: list[Callable[[], None]] = []
        self._clock = clock
        self._store: LeaseStore | None = None
        self._loops: dict[str, Loop] = {}
        self._work: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._stepping = asyncio.Lock()

    # --- what the app hands over ----------------------------------------------------
    def add_loop(self, name: str, factory: Loop) -> None:
        self._loops[name] = factory

    def guard(self, job: Job) -> Callable[..., Awaitable[None]]:
        @functools.wraps(job)
        async def singleton(*args: Any, **kwargs: Any) -> None:
            term = self.term
            if term is None or not self.leads():
                self.refused += 1
                return
            task = self._spawn(job(*args, **kwargs), term, getattr(job, "__name__", "job"))
            try:
                await task
            except asyncio.CancelledError:
                if not task.cancelled() or _cancelling():
                    raise  # our caller's cancel, not the end of the term

        return singleton

    def _spawn(self, work: Coroutine[Any, Any, None], term: Term, name: str) -> asyncio.Task[None]:
        context = contextvars.copy_context()
        context.run(TERM.set, term)
        task = asyncio.create_task(work, name=f"singleton-{name}", context=context)
        self._work.add(task)
        task.add_done_callback(self._work.discard)
        return task

    def leads(self) -> bool:
        """A term, and its lease not lapsed by this replica's clock: a process resumed
        after a pause (SIGSTOP, a long GC, a VM freeze) may still hold a term whose lease
        another replica has since taken, until its loop looks again."""
        return (
            self.term is not None and self.seen is not None and self.seen.expires_at > self._clock()
        )

    # --- life -----------------------------------------------------------------------
    async def start(self, store: LeaseStore) -> None:
        self._store = store
        loop = asyncio.get_running_loop()

        def deposed() -> None:  # called on the store's write thread: wakes this loop
            loop.call_soon_threadsafe(self._wake.set)

        store.add_commit_hook(fence(self._clock, deposed))
        next_at = await self.step()
        self._runner = asyncio.create_task(self._run(next_at), name="leadership")

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        term = self.term
        await self._end_term("stopping")
        if term is not None and self._store is not None:
            release = functools.partial(
                lease.release, name=LEASE, holder=term.holder, epoch=term.epoch, now=self._clock()
            )
            with contextlib.suppress(ClawfleetError):  # it lapses by itself at its expiry
                await self._store.write(release)

    async def _run(self, next_at: float) -> None:
        while True:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_at - self._clock())):
                    await self._wake.wait()
            next_at = await self.step()

    async def step(self) -> float:
        """One decision: take, renew or wait. Returns when to decide next."""
        async with self._stepping:  # the loop's and a caller's (tests) never overlap
            return await self._step(self._require())

    async def _step(self, store: LeaseStore) -> float:
        now = self._clock()
        if self.term is not None and self.seen is not None and self.seen.expires_at <= now:
            await self._end_term("the lease lapsed before it was renewed")
        take = functools.partial(lease.take, name=LEASE, me=self.holder, now=now, ttl=self.ttl)
        try:
            async with asyncio.timeout(self._patience(now)):
                decision = await store.write(take)
        except (ClawfleetError, TimeoutError) as exc:
            await self._end_term(f"the lease could not be renewed ({_said(exc)})")
            self.decided.set()
            return now + renew_every(self.ttl)
        finally:
            self.attempts += 1
        self.seen = decision.lease
        if decision.action == "wait":
            await self._end_term(f"{decision.lease.holder} holds the lease")
        else:
            await self._begin_term(Term(LEASE, self.holder, decision.lease.epoch))
        self.decided.set()
        return decision.next_at

    def _patience(self, now: float) -> float:
        """A renewal must land before the lease lapses; a first take may take a TTL."""
        if self.term is not None and self.seen is not None:
            return max(0.0, self.seen.expires_at - now)
        return self.ttl

    # --- terms ----------------------------------------------------------------------
    async def _begin_term(self, term: Term) -> None:
        if term == self.term:
            return
        await self._end_term("a new epoch")
        self.term = term
        log.warning("leadership: this replica (%s) leads, epoch %d", term.holder, term.epoch)
        for name, factory in self._loops.items():
            self._spawn(factory(), term, name)
        for callback in self.on_lead:
            callback()
        self.changed.set()

    async def _end_term(self, why: str) -> None:
        term, self.term = self.term, None
        if term is None:
            return
        log.warning("leadership: %s stops leading (epoch %d): %s", term.holder, term.epoch, why)
        work = list(self._work)
        for task in work:
            task.cancel()
        await asyncio.gather(*work, return_exceptions=True)
        self.changed.set()

    def status(self) -> dict[str, Any]:
        seen = self.seen
        return {
            "me": self.holder,
            "leading": self.term is not None,
            "epoch": self.term.epoch if self.term else (seen.epoch if seen else None),
            "leader": seen.holder if seen else None,
            "expires_at": seen.expires_at if seen else None,
        }

    def _require(self) -> LeaseStore:
        if self._store is None:
            raise RuntimeError("leadership is not started")
        return self._store


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _said(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer before the lease would lapse"
    return str(getattr(exc, "message", exc))
