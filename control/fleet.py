"""The control plane's operations, as the HTTP layer and background loops call them:
a facade over the domain packages, holding no SQL and no rules of its own.

Contract: each operation commits through the store first and only then has effects
outside it (waking long-polls, asking the autoscaler for a run), so nothing a worker
is told is ever rolled back. A change to users goes through
control/workers/assignments.py `commit`, which bumps the generation of every server
it touched in the same transaction. Placement runs whenever room may have appeared:
a worker registers or comes back from unhealthy, a move completes, a user changes
(leaves, suspends, changes plan), a server is uncordoned; the autoscaler places on
every run as a safety net. Placement decides over the room index the Fleet owns
(`room_index`, control/users/room_index.py), attached to the store and rebuilt by
`start()`. Collaborators that act outside the fleet (the autoscaler's
nudge, the provider's prices, DNS following assignments) are given at construction.
Two loops: `run_sweeps` (the liveness sweep, billing deadlines, the nonce table's
purge: a singleton, run by the leader, control/leadership/) and `run_local` (on every
replica: its own nonce ledger pruned, its live and unhealthy counts re-read, so a
follower hands out the interval the whole fleet needs).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable

import aiosqlite

from control.billing import rules
from control.capacity.providers.base import VolumePrice
from control.db.store import Store
from control.keyring import Keyring
from control.metrics import Metrics
from control.settings import Settings
from control.users import names, placing, prestart, records, secrets
from control.users.features import fleet_needs
from control.users.room_index import RoomIndex
from control.users.rooms import Reserve
from control.volumes import backups as volume_backups
from control.workers import assignments, liveness, nonces, registration, servers, tokens
from control.workers.auth import AgentCaller, Authenticator
from control.workers.heartbeats import HeartbeatWriter
from control.workers.trust import Stated
from shared.backoff import jittered
from shared.protocol import Assignments, Heartbeat, HeartbeatReply, RegisterReply, RegisterRequest

log = logging.getLogger(__name__)

# Keeps heartbeat load bounded as the fleet grows (see liveness.heartbeat_interval).
MAX_HEARTBEATS_PER_SECOND = 200.0
MAX_WAIT = 60.0
JITTER = 0.1
_OPERATOR_ACTIONS: dict[rules.Target, rules.OperatorAction] = {
    "deprovision": "delete",
    "suspend": "suspend",
    "run": "resume",
}
PriceLookup = Callable[[str | None], float | None]
VolumePriceLookup = Callable[[], VolumePrice | None]


def _applied(result: rules.Applied) -> set[str]:
    return result.touched


class Fleet:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        keyring: Keyring,
        metrics: Metrics | None = None,
        *,
        on_pending: Callable[[], None] = lambda: None,
        on_change: Callable[[], None] = lambda: None,
        price_of: PriceLookup = lambda server_type: None,
        volume_price: VolumePriceLookup = lambda: None,
    ) -> None:
        """`on_pending`: asks the autoscaler for a run now (users left pending, a Checkout
        opened, a worker let a container or a volume go);
        `on_change`: any worker's desired set changed (DNS follows assignments);
        `price_of`: hourly price of a server type, if the provider knows it;
        `volume_price`: the provider's price of a GB of volume per month, if it knows it."""
        self.metrics = metrics or Metrics()
        self.settings = settings
        self.store = store
        self.keyring = keyring
        self.on_pending = on_pending
        self.price_of = price_of
        self.volume_price = volume_price
        self.rand: Callable[[], float] = random.random  # the intervals' and polls' spread
        self.plans = dict(settings.plans)
        self.reserve = Reserve(
            settings.system_reserve_mb, settings.system_reserve_cpus, settings.user_volumes
        )
        # The agent features every user's spec needs: placed only where an agent has them.
        self.needs = fleet_needs(settings)
        # Every active server's room, kept by the store's writes (attached by `start`).
        self.room_index = RoomIndex(self.plans, self.reserve)
        self.billing_policy = rules.Policy(
            self.plans,
            settings.past_due_grace,
            settings.retention_days * 86400,
            # A cancelled user's final snapshot is asked for in the cancelling transaction.
            on_cancelled=volume_backups.on_cancelled if settings.backups_enabled else None,
            reserve=self.reserve,
        )
        self.ledger = nonces.NonceLedger()
        self.auth = Authenticator(store, keyring, self.ledger)
        self.board = assignments.GenerationBoard(on_change)
        self.heartbeats = HeartbeatWriter(store, self.needs)
        # What each worker last reported holding (containers and mounted volumes): when
        # something goes, a detach or a move's next step may be due (`_let_go`).
        self._held: dict[str, frozenset[str]] = {}
        self.started_at = time.time()
        self._live_workers = 0
        self._paced_over: float | None = None  # heartbeats a second past the pace
        # Workers the sweep found unhealthy: the heartbeat that revives one makes room.
        self._unhealthy: set[str] = set()

    async def start(self) -> None:
        self.started_at = time.time()
        await self.room_index.attach(self.store)
        await self.ledger.load(self.store, self.started_at)
        await self.refresh_local(self.started_at)

    async def refresh_local(self, now: float) -> None:
        """What every replica keeps in its own memory, whether it leads or not (the
        liveness sweep runs on the leader only): its nonce ledger pruned to the clock
        window, and the fleet's live and unhealthy workers as the database says, which
        size the heartbeat interval it hands out and the revival nudge."""
        self.ledger.prune(now)
        self._live_workers = await servers.live_count(self.store)
        self._unhealthy = await servers.unhealthy_ids(self.store)
        self._note_pace()

    def _note_pace(self) -> None:
        """Says once when the fleet outgrows the pace (docs/production.md): past
        MAX_HEARTBEATS_PER_SECOND x DEAD_AFTER / 4 workers, heartbeats come faster."""
        dead_after = self.settings.dead_after
        over = liveness.paced_over(
            self._live_workers, max_rate=MAX_HEARTBEATS_PER_SECOND, dead_after=dead_after
        )
        if (over is None) != (self._paced_over is None):
            if over is not None:
                log.warning(
                    "%d live workers send %.0f heartbeats a second, over the %.0f the "
                    "control plane paces them to: the interval is at its longest "
                    "(%.0f s, a quarter of DEAD_AFTER); raise DEAD_AFTER, or give the "
                    "control plane more CPU",
                    self._live_workers, over, MAX_HEARTBEATS_PER_SECOND,
                    liveness.longest_interval(dead_after),
                )  # fmt: skip
            else:
                log.info("heartbeats are back within %.0f a second", MAX_HEARTBEATS_PER_SECOND)
        self._paced_over = over

    def interval(self) -> float:
        base = liveness.heartbeat_interval(
            self.settings.heartbeat_interval,
            self._live_workers,
            max_rate=MAX_HEARTBEATS_PER_SECOND,
            dead_after=self.settings.dead_after,
        )
        return round(jittered(base, spread=JITTER, rand=self.rand()), 3)

    # --- workers -----------------------------------------------------------------
    async def register(self, caller: AgentCaller, req: RegisterRequest) -> RegisterReply:
        interval = self.interval()
        done = await registration.register(self.store, self.keyring, caller, req, interval)
        self._live_workers += 1
        await self.place()
        return RegisterReply(
            worker_id=done.worker_id, secret=done.secret, heartbeat_interval=interval
        )

    async def heartbeat(self, caller: AgentCaller, hb: Heartbeat) -> HeartbeatReply:
        interval = self.interval()
        gen, released = await self.heartbeats.submit(caller, hb, interval)
        self.metrics.heartbeats.inc()
        self.board.notify(*released)
        revived = caller.key_id in self._unhealthy
        self._unhealthy.discard(caller.key_id)
        if revived or released:  # back to active, or a finished move freed its old server
            await self.place()
        self._let_go(caller.key_id, hb)
        return HeartbeatReply(heartbeat_interval=interval, generation=gen)

    def _let_go(self, server_id: str, hb: Heartbeat) -> None:
        """With volumes, a container or a mount that a worker no longer reports is what a
        volume's detach (a move, a cancellation) or a move's snapshot waits for: ask the
        autoscaler, which runs those steps, for a run now rather than at its next tick."""
        if not self.settings.user_volumes:
            return
        held = frozenset(
            [f"c:{c.user_id}" for c in hb.containers]
            + [f"v:{v.id}" for v in hb.volumes if v.state == "mounted"]
        )
        before = self._held.get(server_id)
        self._held[server_id] = held
        if before is not None and before - held:
            self.on_pending()

    def assignments(
        self, caller: AgentCaller, after: int, wait: float
    ) -> Awaitable[Assignments | None]:
        """The worker's desired set once its generation exceeds `after`, else None
        after `wait` seconds (capped at MAX_WAIT, spread by `assignments.held_for`). Its
        nonce joins the heartbeats' commit.
        The long-poll itself is returned, not awaited here: one frame fewer per waiter."""
        accept = functools.partial(self.heartbeats.accept, caller)
        read = functools.partial(
            assignments.desired_set,
            self.store,
            self.settings,
            self.plans,
            self.keyring,
            caller.key_id,
        )
        wait = assignments.held_for(min(max(wait, 0.0), MAX_WAIT), self.rand())
        return assignments.long_poll(self.board, caller.key_id, after, wait, read, accept)

    async def mint_join_token(
        self, ttl: float | None, stated: Stated | None = None
    ) -> tokens.MintedToken:
        ttl = ttl or self.settings.bootstrap_token_ttl
        return await tokens.mint(self.store, self.keyring, ttl, stated=stated)

    async def set_server_flag(self, server_id: str, action: str) -> None:
        await self.store.write(lambda conn: servers.set_flag(conn, server_id, action))
        if action == "uncordon":
            await self.place()

    # --- users -------------------------------------------------------------------
    async def create_user(self, user_id: str, subdomain: str, plan_name: str) -> None:
        """The user and its placement in one transaction: one wait for the write lock,
        not two, between the request and its worker's wake-up (issue 16)."""
        plan = names.known_plan(self.plans, plan_name)
        add = records.creation(self.keyring, user_id, subdomain, plan)

        async def change(conn: aiosqlite.Connection) -> placing.PlacementResult:
            await add(conn)
            return await self._place_pending(conn)

        self._placed(await assignments.commit(self.store, change, lambda r: r.placed.values()))

    async def set_user_target(self, user_id: str, goal: rules.Target, reason: str) -> None:
        """Deprovision (DELETE), suspend or resume a user at the operator's request: a
        hold that billing events never lift (control/billing/rules.py)."""
        change = functools.partial(
            rules.operator_action,
            user_id=user_id,
            action=_OPERATOR_ACTIONS[goal],
            policy=self.billing_policy,
            now=time.time(),
        )
        await self._after(await assignments.commit(self.store, change, _applied))

    async def apply_billing(self, fact: rules.Fact) -> None:
        """The Stripe outbox's apply function (idempotent; raising means retry)."""
        change = functools.partial(
            rules.apply_fact, fact=fact, policy=self.billing_policy, keyring=self.keyring
        )
        await self._after(await assignments.commit(self.store, change, _applied))

    async def _after(self, applied: rules.Applied) -> None:
        self.board.notify(*applied.touched)
        # Any change to a user may have made room: it left, or its plan changed.
        if applied.place or applied.user_id is not None:
            await self.place()

    async def move_user(self, user_id: str, target: str | None) -> str:
        change = functools.partial(
            placing.operator_move,
            plans=self.plans,
            reserve=self.reserve,
            user_id=user_id,
            target=target,
            needs=self.needs,
            index=self.room_index,
        )
        source, chosen = await assignments.commit(self.store, change, lambda m: [m[1]])
        self.board.notify(chosen, source)
        return chosen

    async def rotate_token(self, user_id: str) -> None:
        """A new gateway token; the user's container is replaced to pick it up."""
        ciphertext = self.keyring.encrypt(self.keyring.new_secret())
        change = functools.partial(
            records.set_gateway_token, user_id=user_id, ciphertext=ciphertext, now=time.time()
        )
        server_id = await assignments.commit(self.store, change, lambda s: [s])
        if server_id:
            self.board.notify(server_id)

    async def set_secrets(self, user_id: str, changes: dict[str, str | None]) -> list[str]:
        """Merges {"NAME": "value" | None} into the user's secrets (only the names the
        tenant profile allows; encrypted at rest); a change restarts its container.
        Returns the names set, never a value."""
        secrets.check_changes(changes, self.settings.tenant_profile.secret_names)
        change = functools.partial(
            secrets.change, keyring=self.keyring, user_id=user_id, changes=changes
        )
        set_names, server = await assignments.commit(self.store, change, lambda r: [r[1]])
        if server:
            self.board.notify(server)
        return list(set_names)

    async def restart_user(self, user_id: str) -> None:
        """The user's container replaced on its server, its state kept."""
        change = functools.partial(records.count_restart, user_id=user_id, now=time.time())
        self.board.notify(await assignments.commit(self.store, change, lambda s: [s]))

    async def place(self) -> placing.PlacementResult:
        result = await assignments.commit(
            self.store, self._place_pending, lambda r: r.placed.values()
        )
        return self._placed(result)

    async def _place_pending(self, conn: aiosqlite.Connection) -> placing.PlacementResult:
        return await placing.place_pending(
            conn, self.plans, self.reserve, self.needs, index=self.room_index
        )

    def _placed(self, result: placing.PlacementResult) -> placing.PlacementResult:
        self.board.notify(*result.touched_servers)
        if result.pending:
            log.info("%d user(s) pending: no worker has room", len(result.pending))
            self.on_pending()
        return result

    # --- background --------------------------------------------------------------
    async def sweep(self, now: float | None = None) -> None:
        """One liveness and deadline pass at `now` (a test's clock; else the time)."""
        now = time.time() if now is None else now
        swept = await liveness.sweep(self.store, now, self.started_at, self.settings.dead_after)
        if swept.dead:
            release = functools.partial(records.release_from, server_ids=swept.dead, now=now)
            touched = await assignments.commit(self.store, release, lambda t: t)
            self.board.notify(*swept.dead, *touched)
        if swept.dead or swept.active:
            await self.place()
        await self._billing_deadlines(now)
        await self.store.write(lambda conn: nonces.purge_expired(conn, now))
        await self.refresh_local(now)

    async def _billing_deadlines(self, now: float) -> None:
        """past_due past its grace → suspended; provisional users due → withdrawn
        (control/users/prestart.py); deprovisioned past retention → purged."""
        grace = self.settings.past_due_grace
        for user_id in await rules.overdue(self.store, now, grace):
            change = functools.partial(
                rules.refresh,
                user_id=user_id,
                policy=self.billing_policy,
                now=now,
                reason=f"past_due for more than {grace:.0f}s",
            )
            await self._after(await assignments.commit(self.store, change, _applied))
        ttl = self.settings.prestart_ttl_minutes * 60.0  # unpaid agents started at sign-up
        gone = functools.partial(prestart.withdraw_due, now=now, ttl=ttl)
        self.board.notify(*await assignments.commit(self.store, gone, lambda t: t))
        purges = functools.partial(records.advance_purges, now=now)
        self.board.notify(*await assignments.commit(self.store, purges, lambda t: t))

    async def run_sweeps(self) -> None:
        """The liveness sweep every period (a singleton: the leader's)."""
        await self._every_period(self.sweep, "liveness sweep")

    async def run_local(self) -> None:
        """`refresh_local` every period, on every replica."""
        await self._every_period(lambda: self.refresh_local(time.time()), "local refresh")

    async def _every_period(self, step: Callable[[], Awaitable[None]], what: str) -> None:
        period = max(1.0, min(self.settings.heartbeat_interval / 2, 5.0))
        while True:
            await asyncio.sleep(period)
            try:
                await step()
            except Exception as exc:
                # Last resort, on purpose: this loop must never die (no sweep, no dead
                # workers noticed); one line, and the next period retries.
                log.error("%s failed (%s: %s); retrying next period", what, type(exc).__name__, exc)
