"""Each worker's desired set, and the long-poll that delivers it.

Contract: `commit` runs a change to users in one transaction and, in that same
transaction, bumps the generation of every server whose desired set the change
returns as touched (control/workers/servers.py), once per change: so a worker's
generation moves exactly when what it must run does. `desired_set` reads a worker's
generation and complete set of container specs in one snapshot; with USER_VOLUMES a user
is in it only on the server its volume is attached to, and its spec carries the volume.
A user with a restore pending or running is in no set (nothing may write its state
while it is replaced), and the set carries the worker's open backup jobs of volumes
attached to it (control/backup_jobs/; none while backups are off), a move's restore
included: its new volume is attached to the target before the user's row names it. A worker gets no
spec and no job its agent cannot honour: when its declared features lack any that users'
specs need (control/users/features.py), its set carries none of them (an agent ignores
what it does not know, and would start a user on empty Docker volumes); users there show
why (control/api/views.py). A worker that has not declared its features since the
upgrade that introduced them is answered 503 until its next heartbeat, so its agent
keeps what runs as it is instead of acting on a set computed without them.
`GenerationBoard.notify` is called after a commit that bumped a worker's generation
and wakes every long-poll waiting on that worker; a waiter enters the board BEFORE
reading the generation, so a change between the read and the wait is never missed.
With replicas on PostgreSQL, every replica's commits reach the board too, through
the database's NOTIFY (control/workers/wake_bus.py), and `wake_all` wakes every
waiter when some changes may have been missed (each re-reads its set).
A waiting long-poll holds a handful of objects and no task or timer of its own: one
future, resolved by `notify`, by the board's single deadline timer or by `close`
(issue 16: at 10k workers these are what every full collection walks). Its nonce
is committed with the heartbeats' group commit (control/workers/heartbeats.py
`accept`), which also gives the first generation. `until_parked` lets a caller (a
test) await the moment a long-poll is waiting, instead of sleeping and hoping.
`held_for(wait, rand)` is how long a long-poll asking `wait` is held: up to
POLL_SPREAD less, as Nomad and Consul spread their blocking queries, so that polls
opened in the same second (a fleet reconnecting after a restart) drift apart instead
of renewing together for ever (issue 16: 10k polls in step put every p99 at 0.1-0.5 s).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import sqlite3
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import aiosqlite

from control.backup_jobs.messages import backup_job
from control.db.store import Row, Store
from control.errors import ServiceUnavailable
from control.keyring import Keyring
from control.plans import Plan
from control.settings import Settings
from control.users import features
from control.users.plans import plan_of
from control.users.secrets import stored_secrets
from control.workers import servers
from control.workers.auth import check_not_revoked
from control.workers.specs import GATEWAY_TOKEN_ENV, UserPlacement, build_spec
from shared.backoff import backoff_delay
from shared.protocol import MAX_BACKUPS, Assignments, BackupJob, BlockVolumeSpec

T = TypeVar("T")
POLL_SPREAD = 1 / 16  # of the wait: 3.4 s of 55, about 3 % more polls


def held_for(wait: float, rand: float) -> float:
    """Seconds in [wait * (1 - POLL_SPREAD), wait], `rand` in [0, 1) placing it: never
    longer than asked, so no client's timeout (its wait plus a margin) is ever reached."""
    return backoff_delay(0, base=wait, cap=wait, rand=rand, spread=POLL_SPREAD)


class GenerationBoard:
    """Long-polls waiting for a worker's generation to move, at a fixed small cost each:
    one future, one entry in its worker's list and one in a deadline heap. One loop
    timer (`call_at`) serves the whole heap; no waiter has a task or a timer of its own."""

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self._waiting: dict[str, list[asyncio.Future[bool]]] = {}
        # (loop deadline, tie-breaker, waiter); an entry whose waiter left stays until it
        # pops or the heap is compacted: deadlines are at most MAX_WAIT away.
        self._deadlines: list[tuple[float, int, asyncio.Future[bool]]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._live = 0
        self._closed = False
        self._parked: set[asyncio.Future[bool]] = set()  # waiters awaiting their future
        self._watchers: list[asyncio.Future[None]] = []  # `until_parked` callers
        # Called on every change of any worker's desired set (DNS follows assignments).
        self.on_change = on_change

    def enter(self, server_id: str, deadline: float) -> asyncio.Future[bool]:
        """A waiter on `server_id` until loop time `deadline`: its future becomes True
        when `notify` names the worker, False at the deadline or when the board closes.
        Enter BEFORE reading the generation; `leave` always, whatever happened."""
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[bool] = loop.create_future()
        if self._closed:
            woken.set_result(False)
            return woken
        self._live += 1
        self._waiting.setdefault(server_id, []).append(woken)
        heapq.heappush(self._deadlines, (deadline, next(self._order), woken))
        if self._deadlines[0][2] is woken:
            self._arm(loop)
        return woken

    def park(self, woken: asyncio.Future[bool]) -> None:
        """Marks a waiter as awaiting its future (what `until_parked` waits for)."""
        self._parked.add(woken)
        self._announce()

    def leave(self, server_id: str, woken: asyncio.Future[bool]) -> None:
        if woken in self._parked:
            self._parked.discard(woken)
            self._announce()
        waiting = self._waiting.get(server_id)
        if waiting is not None and woken in waiting:
            waiting.remove(woken)
            if not waiting:
                del self._waiting[server_id]
        if not woken.done():
            woken.cancel()  # the timer skips it
        if not self._closed:
            self._live -= 1
            if len(self._deadlines) > 2 * self._live + 64:
                self._deadlines = [e for e in self._deadlines if not e[2].done()]
                heapq.heapify(self._deadlines)

    def notify(self, *server_ids: str) -> None:
        if server_ids:
            self.on_change()
        for server_id in server_ids:
            for woken in self._waiting.pop(server_id, ()):
                if not woken.done():
                    woken.set_result(True)

    def wake_all(self) -> None:
        """Wakes every waiter as if its worker changed, and calls `on_change`: what a
        replica does when changes may have been missed (control/workers/wake_bus.py)."""
        self.on_change()
        for waiting in self._waiting.values():
            for woken in waiting:
                if not woken.done():
                    woken.set_result(True)
        self._waiting.clear()

    def waiters(self) -> int:
        """Long-polls waiting now."""
        return self._live

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(self._deadlines[0][0], self._expire) if self._deadlines else None

    def _expire(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, woken = heapq.heappop(self._deadlines)
            if not woken.done():
                woken.set_result(False)
        self._timer = None
        self._arm(loop)

    async def until_parked(self, server_id: str, count: int = 1) -> None:
        """Returns once at least `count` long-polls wait on `server_id`."""
        while sum(w in self._parked for w in self._waiting.get(server_id, ())) < count:
            watcher = asyncio.get_running_loop().create_future()
            self._watchers.append(watcher)
            await watcher

    def _announce(self) -> None:
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            if not watcher.done():
                watcher.set_result(None)

    def close(self) -> None:
        """Wakes every waiter so shutdown never waits out a long-poll."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for waiting in self._waiting.values():
            for woken in waiting:
                if not woken.done():
                    woken.set_result(False)
        self._waiting.clear()
        self._deadlines.clear()
        self._live = 0

    @property
    def closed(self) -> bool:
        return self._closed


async def commit(
    store: Store,
    change: Callable[[aiosqlite.Connection], Awaitable[T]],
    touched: Callable[[T], Iterable[str | None]],
) -> T:
    """Runs `change` and bumps the generation of each server `touched(result)` lists
    (a server listed twice is bumped twice; None is skipped), in one transaction."""

    async def apply(conn: aiosqlite.Connection) -> T:
        result = await change(conn)
        for server_id in touched(result):
            if server_id:
                await servers.bump_generation(conn, server_id)
        return result

    return await store.write(apply)


async def long_poll(
    board: GenerationBoard,
    server_id: str,
    after: int,
    wait: float,
    read: Callable[[], Awaitable[Assignments]],
    accept: Callable[[], Awaitable[int]],
) -> Assignments | None:
    """`read()` once the worker's generation exceeds `after`, else None after `wait`
    seconds; 503 when the board closes. `accept()` admits the request (its nonce
    committed) and gives the generation first; a woken round reads the set itself,
    generation included, in one go (`read` answers 403 for a revoked worker)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    woken_before = False  # a flag, not two closures: each held poll's objects count
    while True:
        woken = board.enter(server_id, deadline)
        try:
            if woken_before:
                found: Assignments | None = await read()
                if found is not None and found.generation <= after:
                    found = None
            else:
                found = await read() if await accept() > after else None
            if found is not None:
                return found
            if loop.time() >= deadline or board.closed:
                break
            board.park(woken)
            if not await woken:
                break
        finally:
            board.leave(server_id, woken)
        woken_before = True
    _refuse_if_closed(board)
    return None


def _refuse_if_closed(board: GenerationBoard) -> None:
    """Nothing at the deadline; 503 when the board closed (this control plane stops): the
    agent then polls again after its backoff, with a wait of its own drawing, instead
    of the whole fleet renewing its polls in step with this moment."""
    if board.closed:
        raise ServiceUnavailable("the control plane is shutting down: poll again")


async def desired_set(
    store: Store, settings: Settings, plans: dict[str, Plan], keyring: Keyring, server_id: str
) -> Assignments:
    """The worker's set, read in one snapshot and one hop off the loop (`Store.read`):
    at 10k workers the wake-up's answer was mostly four reads queued one by one."""
    return await store.read(lambda conn: _desired(conn, settings, plans, keyring, server_id))


def _desired(
    conn: sqlite3.Connection,
    settings: Settings,
    plans: dict[str, Plan],
    keyring: Keyring,
    server_id: str,
) -> Assignments:
    rows = conn.execute(
        "SELECT s.generation, s.status, s.features, u.id, u.subdomain, u.plan, u.gateway_token_ciphertext, "
        "u.secrets_ciphertext, u.restarts, u.server_id AS user_server, v.provider_id AS volume_id, "
        "v.device, v.size_gb, "
        "v.server_id AS volume_server, v.state AS volume_state FROM servers s "
        # Two index searches, not an OR in the join (which read every user).
        "LEFT JOIN users u ON u.id IN (SELECT id FROM users WHERE server_id = ?1 "
        "AND state IN ('provisioning', 'running') UNION SELECT id FROM users WHERE moving_from = ?1) "
        "LEFT JOIN volumes v ON v.user_id = u.id "
        "WHERE s.id = ?1 ORDER BY u.id",
        (server_id,),
    ).fetchall()
    # A long-poll stops with 403 once its worker is revoked (or gone).
    check_not_revoked(server_id, str(rows[0]["status"]) if rows else "deleted")
    gen = int(rows[0]["generation"])
    honoured = _can_honour(rows[0]["features"], settings, server_id)
    restoring = {r["user_id"] for r in conn.execute(RESTORING_SQL)}
    # The container stays away while its state is replaced (docs/backups.md, Restore).
    rows = [r for r in rows if r["id"] not in restoring and honoured]
    if settings.user_volumes:
        # A user runs only where its volume is attached: never on an empty directory
        # while its data is elsewhere, and never on both sides of a move (the volume
        # follows the user break-before-make, control/volumes/steps.py).
        rows = [r for r in rows if r["id"] is not None and _volume_here(r, server_id)]
    specs = [
        build_spec(_placement(r, plan_of(plans, r["plan"]), settings, keyring), settings, server_id)
        for r in rows
        if r["id"] is not None
    ]
    purge = conn.execute(
        "SELECT id FROM users WHERE state = 'deprovisioned' AND data_server_id = ? "
        "AND purge_generation IS NOT NULL ORDER BY id",
        (server_id,),
    )
    jobs = _backup_jobs(conn, settings, keyring, server_id) if honoured else []
    return Assignments(
        generation=gen, containers=specs, purge=[r["id"] for r in purge], backups=jobs
    )


def _can_honour(declared: str | None, settings: Settings, server_id: str) -> bool:
    """Whether the worker's agent has every feature users' specs need; 503 while it
    has not declared any since this control plane began asking (NULL)."""
    if declared is None:
        raise ServiceUnavailable(
            f"worker {server_id} has not declared its agent features yet (its next beat will)",
            code="features_unknown",
        )
    needs = features.fleet_needs(settings)
    return features.withheld_reason(server_id, needs, features.parse(declared)) is None


RESTORING_SQL = (
    "SELECT DISTINCT user_id FROM backup_jobs WHERE kind = 'restore' "
    "AND state IN ('pending', 'running')"
)


# Volumes as jobs find them: the users' own, and the new volume a move to another
# location restores onto before the user's row names it (control/volumes/relocate.py).
ATTACHED_SQL = (
    "SELECT user_id, server_id, provider_id, device, size_gb, state FROM volumes "
    "UNION ALL SELECT user_id, target_server, new_provider_id, new_device, size_gb, "
    "'attached' FROM relocations WHERE phase = 'restoring'"
)


def _backup_jobs(
    conn: sqlite3.Connection, settings: Settings, keyring: Keyring, server_id: str
) -> list[BackupJob]:
    """Its open backup jobs of volumes still attached to it, oldest first."""
    if not settings.backups_enabled:
        return []
    rows = conn.execute(
        "SELECT j.*, v.device AS volume_device, v.size_gb AS volume_size_gb "
        f"FROM backup_jobs j JOIN ({ATTACHED_SQL}) v ON v.user_id = j.user_id "
        "AND v.server_id = j.server_id AND v.provider_id = j.volume_id "
        "WHERE j.server_id = ? AND j.state IN ('pending', 'running') "
        "AND v.state = 'attached' ORDER BY j.created_at, j.id LIMIT ?",
        (server_id, MAX_BACKUPS),
    ).fetchall()
    return [backup_job(r, settings, keyring) for r in rows]


def _volume_here(row: Row, server_id: str) -> bool:
    here = row["user_server"] == server_id and row["volume_server"] == server_id
    return bool(here and row["volume_state"] == "attached")


def _placement(row: Row, plan: Plan, settings: Settings, keyring: Keyring) -> UserPlacement:
    return UserPlacement(
        row["id"],
        row["subdomain"],
        plan,
        _env(keyring, row),
        stored_secrets(keyring, row["secrets_ciphertext"]),
        _block_volume(row, plan) if settings.user_volumes else None,
        row["restarts"],
    )


def _block_volume(row: Row, plan: Plan) -> BlockVolumeSpec:
    """The user's volume, at the size its plan asks for as soon as the plan changes: the
    provider's resize follows (control/volumes/steps.py), and the agent grows the file
    system whenever the device has grown, with no restart of the container for it."""
    size = max(int(row["size_gb"]), plan.volume_gb)
    return BlockVolumeSpec(id=row["volume_id"], device=row["device"], size_gb=size)


def _env(keyring: Keyring, row: Row) -> dict[str, str]:
    # The gateway token travels only inside this worker-scoped, signed reply.
    if row["gateway_token_ciphertext"] is None:
        return {}
    return {GATEWAY_TOKEN_ENV: keyring.decrypt(row["gateway_token_ciphertext"])}
