"""The control plane's operations, as the HTTP layer and background loops call them.

Contract: each operation commits through the store first and only then has effects
outside it (waking long-polls), so nothing a worker is told is ever rolled back.
Placement runs whenever room may have appeared: a worker registers or comes back
from unhealthy, a move completes, a user changes (leaves, suspends, changes plan),
a server is uncordoned; the autoscaler places on every run as a safety net.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

import aiosqlite
from aiohttp import web

from control.billing import rules
from control.db import events
from control.db.store import Store, fetch_one
from control.errors import BadRequest, Conflict, NotFound
from control.keyring import Keyring
from control.metrics import Metrics
from control.settings import Settings
from control.users import records
from control.users.plans import Plan
from control.workers import assignments, liveness, registration
from control.workers.auth import AgentCaller, Authenticator, check_not_revoked
from control.workers.heartbeats import HeartbeatWriter
from control.workers.nonces import NonceLedger, purge_expired
from control.workers.trust import Stated
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
SERVER_FLAGS = {
    "cordon": "UPDATE servers SET cordoned = 1 WHERE id = ?",
    # Uncordoning is also how an operator clears an over-claim flag (control/workers/trust.py).
    "uncordon": "UPDATE servers SET cordoned = 0, overclaim = NULL, overclaim_at = NULL "
    "WHERE id = ?",
    # Draining implies cordoned: nothing new lands on a server being emptied.
    "drain": "UPDATE servers SET draining = 1, cordoned = 1 WHERE id = ?",
}


class Fleet:
    def __init__(
        self, settings: Settings, store: Store, keyring: Keyring, metrics: Metrics | None = None
    ) -> None:
        self.metrics = metrics or Metrics()
        self.settings = settings
        self.store = store
        self.keyring = keyring
        self.plans: dict[str, Plan] = dict(settings.plans)
        self.reserve = records.Reserve(settings.system_reserve_mb, settings.system_reserve_cpus)
        self.ledger = NonceLedger()
        self.auth = Authenticator(store, keyring, self.ledger)
        self.board = assignments.GenerationBoard()
        self.heartbeats = HeartbeatWriter(store)
        self.started_at = time.time()
        self._live_workers = 0
        # Workers the sweep found unhealthy: the heartbeat that revives one makes room.
        self._unhealthy: set[str] = set()
        # Set by the app: asks the autoscaler for a run when users are left pending.
        self.on_pending: Callable[[], None] = lambda: None
        # Set by the app from the provider: hourly price of a server type, if known.
        self.price_of: Callable[[str | None], float | None] = lambda server_type: None

    async def start(self) -> None:
        self.started_at = time.time()
        await self.ledger.load(self.store, self.started_at)
        await self._count_live()
        self._unhealthy = {
            r["id"]
            for r in await self.store.fetch_all("SELECT id FROM servers WHERE status = 'unhealthy'")
        }

    async def _count_live(self) -> None:
        row = await self.store.fetch_one(
            "SELECT COUNT(*) AS n FROM servers WHERE status IN ('active', 'unhealthy')"
        )
        self._live_workers = int(row["n"]) if row else 0

    def interval(self) -> float:
        base = liveness.heartbeat_interval(
            self.settings.heartbeat_interval,
            self._live_workers,
            max_rate=MAX_HEARTBEATS_PER_SECOND,
            dead_after=self.settings.dead_after,
        )
        return round(base * random.uniform(1 - JITTER, 1 + JITTER), 3)

    # --- workers -----------------------------------------------------------------
    async def register(self, caller: AgentCaller, req: RegisterRequest) -> RegisterReply:
        if req.protocol != 1:
            raise BadRequest(
                f"protocol {req.protocol} is not supported (this control plane speaks 1)",
                code="unsupported_protocol",
            )
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
        return HeartbeatReply(heartbeat_interval=interval, generation=gen)

    async def assignments(self, caller: AgentCaller, after: int, wait: float) -> Assignments | None:
        """The worker's desired set once its generation exceeds `after`, else None
        after `wait` seconds (capped at MAX_WAIT)."""
        await self.store.write(caller.accept_live_worker)
        deadline = time.monotonic() + min(max(wait, 0.0), MAX_WAIT)
        while True:
            event = self.board.event(caller.key_id)
            generation, status = await assignments.generation(self.store, caller.key_id)
            check_not_revoked(caller.key_id, status)
            if generation > after:
                return await assignments.desired_set(
                    self.store, self.settings, self.plans, self.keyring, caller.key_id
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.board.closed:
                return None
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                return None

    async def mint_join_token(
        self, ttl: float | None, stated: Stated | None = None
    ) -> registration.MintedToken:
        return await registration.mint_token(
            self.store, self.keyring, ttl or self.settings.bootstrap_token_ttl, stated=stated
        )

    async def set_server_flag(self, server_id: str, action: str) -> None:
        statement = SERVER_FLAGS[action]

        async def apply(conn: aiosqlite.Connection) -> None:
            if await fetch_one(conn, "SELECT 1 FROM servers WHERE id = ?", (server_id,)) is None:
                raise NotFound(f"no server {server_id}")
            await conn.execute(statement, (server_id,))
            await events.record(
                conn, f"server_{action}", f"operator asked to {action}", server_id=server_id
            )

        await self.store.write(apply)
        if action == "uncordon":
            await self.place()

    # --- users -------------------------------------------------------------------
    def plan(self, name: str) -> Plan:
        plan = self.plans.get(name)
        if plan is None:
            raise BadRequest(
                f"plan: unknown plan {name!r} (known: {', '.join(sorted(self.plans))})",
                code="unknown_plan",
            )
        return plan

    async def create_user(self, user_id: str, subdomain: str, plan_name: str) -> None:
        records.validate_user_id(user_id)
        records.validate_subdomain(subdomain)
        token = self.keyring.encrypt(self.keyring.new_secret())
        await records.create(self.store, user_id, subdomain, self.plan(plan_name), token)
        await self.place()

    async def set_user_target(self, user_id: str, goal: rules.Target, reason: str) -> None:
        """Deprovision (DELETE), suspend or resume a user at the operator's request: a
        hold that billing events never lift (control/billing/rules.py)."""
        action = _OPERATOR_ACTIONS[goal]

        async def apply(conn: aiosqlite.Connection) -> rules.Applied:
            return await rules.operator_action(
                conn, user_id, action, self.billing_policy, now=time.time()
            )

        await self._after(await self.store.write(apply))

    async def _refresh_billing(self, user_id: str, reason: str, now: float) -> None:
        async def apply(conn: aiosqlite.Connection) -> rules.Applied:
            return await rules.refresh(conn, user_id, self.billing_policy, now=now, reason=reason)

        await self._after(await self.store.write(apply))

    @property
    def billing_policy(self) -> rules.Policy:
        return rules.Policy(self.plans, self.settings.past_due_grace, self.retention)

    async def apply_billing(self, fact: rules.Fact) -> None:
        """The Stripe outbox's apply function (idempotent; raising means retry)."""

        async def apply(conn: aiosqlite.Connection) -> rules.Applied:
            return await rules.apply_fact(
                conn,
                fact,
                plans=self.plans,
                keyring=self.keyring,
                grace=self.settings.past_due_grace,
                retention=self.retention,
            )

        await self._after(await self.store.write(apply))

    async def _after(self, applied: rules.Applied) -> None:
        self.board.notify(*applied.touched)
        # Any change to a user may have made room: it left, or its plan changed.
        if applied.place or applied.user_id is not None:
            await self.place()

    @property
    def retention(self) -> float:
        return self.settings.retention_days * 86400

    async def move_user(self, user_id: str, target: str | None) -> str:
        async def apply(conn: aiosqlite.Connection) -> tuple[str | None, str | None]:
            source = await fetch_one(conn, "SELECT server_id FROM users WHERE id = ?", (user_id,))
            chosen = await records.start_move(
                conn, self.plans, self.reserve, user_id, target, "operator"
            )
            return chosen, source["server_id"] if source else None

        chosen, source = await self.store.write(apply)
        if chosen is None:
            raise Conflict(f"no other server has room for {user_id}", code="no_room")
        self.board.notify(chosen, *([source] if source else []))
        return chosen

    async def access(self, user_id: str) -> dict[str, str]:
        row = await self.store.fetch_one(
            "SELECT subdomain, gateway_token_ciphertext FROM users WHERE id = ?", (user_id,)
        )
        if row is None:
            raise NotFound(f"no user {user_id}")
        return {
            "url": f"https://{row['subdomain']}.{self.settings.base_domain}",
            "token": self.keyring.decrypt(row["gateway_token_ciphertext"]),
        }

    async def rotate_token(self, user_id: str) -> None:
        """A new gateway token; the user's container is replaced to pick it up."""
        ciphertext = self.keyring.encrypt(self.keyring.new_secret())

        async def apply(conn: aiosqlite.Connection) -> str | None:
            row = await fetch_one(conn, "SELECT server_id FROM users WHERE id = ?", (user_id,))
            if row is None:
                raise NotFound(f"no user {user_id}")
            await conn.execute(
                "UPDATE users SET gateway_token_ciphertext = ?, updated_at = ? WHERE id = ?",
                (ciphertext, time.time(), user_id),
            )
            if row["server_id"]:
                await records.bump_generation(conn, row["server_id"])
            await events.record(conn, "token_rotated", "gateway token rotated", user_id=user_id)
            return str(row["server_id"]) if row["server_id"] else None

        server_id = await self.store.write(apply)
        if server_id:
            self.board.notify(server_id)

    async def place(self) -> records.PlacementResult:
        result = await records.place_pending(self.store, self.plans, self.reserve)
        self.board.notify(*result.touched_servers)
        if result.pending:
            log.info("%d user(s) pending: no worker has room", len(result.pending))
            self.on_pending()
        return result

    # --- background --------------------------------------------------------------
    async def sweep(self, now: float | None = None) -> None:
        """One liveness and deadline pass at `now` (a test's clock; else the time)."""
        now = time.time() if now is None else now
        swept = await registration.sweep_liveness(
            self.store, now, self.started_at, self.settings.dead_after
        )
        self._unhealthy = (self._unhealthy | set(swept.unhealthy)) - {*swept.dead, *swept.active}
        if swept.dead:
            touched = await records.release_from(self.store, swept.dead)
            self.board.notify(*swept.dead, *touched)
        if swept.dead or swept.active:
            await self.place()
        await self._billing_deadlines(now)
        self.ledger.prune(now)
        await self.store.write(lambda conn: purge_expired(conn, now))
        await self._count_live()

    async def _billing_deadlines(self, now: float) -> None:
        """past_due past its grace → suspended; deprovisioned past retention → purged."""
        grace = self.settings.past_due_grace
        overdue = await self.store.fetch_all(
            # billing_state: a held user is re-evaluated too, so a resume sees the verdict.
            "SELECT id FROM users WHERE billing_status = 'past_due' AND past_due_since <= ? "
            "AND COALESCE(billing_state, '') <> 'suspend'",
            (now - grace,),
        )
        for row in overdue:
            await self._refresh_billing(row["id"], f"past_due for more than {grace:.0f}s", now)
        notify = await self.store.write(lambda conn: records.advance_purges(conn, now))
        self.board.notify(*notify)

    async def run_sweeps(self) -> None:
        period = max(1.0, min(self.settings.heartbeat_interval / 2, 5.0))
        while True:
            await asyncio.sleep(period)
            try:
                await self.sweep()
            except Exception:
                log.exception("liveness sweep failed; retrying next period")


FLEET = web.AppKey("fleet", Fleet)
