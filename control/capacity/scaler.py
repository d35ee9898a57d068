"""The autoscaler: gathers a fleet snapshot, applies control/capacity/decisions.py's
decisions through a provider, and records every decision as an event.

Contract:
- `run(scheduled=...)` never overlaps itself (one lock) and never raises: each step
  catches its own provider errors, so one failing step does not stop the others.
- A create is recorded (server row + bootstrap token) BEFORE the provider is called,
  under a deterministic name, so a crash or timeout at any point is repaired by the
  next run adopting the server by name, never by creating a second one.
- Every run first places pending users (a safety net for room no trigger saw), and
  deletes no server whose disk holds users' data (retained or suspended), whether idle
  or drained (`decisions.kept_because`). Retiring a server revokes its bootstrap tokens.
- Orphans (servers with both of our labels that the database does not know) are
  deleted only after three consecutive scheduled sweeps saw them, and never when the
  database or the provider could not be read. A sweep deletes at most
  ORPHAN_DELETES_PER_SWEEP of them, and none while the provider's rate-limit budget is
  down to ORPHAN_BUDGET_RESERVE requests (kept for creates); `orphan_deleted` is
  recorded after the delete succeeded.
- On-demand runs coalesce: while a run is in progress, at most one more waits, and
  every further trigger joins that waiting run (a scheduled trigger makes it sweep).
- Every provider call that failed has its own backoff per resource (our server id, or
  the provider's id for orphans; `shared.backoff.backoff_delay`, or the rate-limit wait
  for a 429): no run, however triggered, calls again for that resource before it is
  due. An expected provider error is one log line with its kind, code and correlation
  id, never a traceback.
- Until the provider is validated (`health.usable`), runs do only what needs no
  catalogue of server types: provisioning timeouts, deleting dead servers and drains.
  No create, no retry of an unconfirmed create, no scale-down.
- MAX_SERVERS is a hard cap on servers that may exist at the provider: it counts every
  row not `deleted` (dead ones too, until their delete succeeded), orphans currently
  sighted, and creates whose outcome is unknown. An unconfirmed create is given up
  (`create_abandoned`) only after PROVISION_TIMEOUT AND a definite answer from the
  provider that no server carries its id label; until then it keeps counting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiosqlite

from cloud_init.render import user_data_hash
from control.capacity import decisions
from control.capacity.providers.base import CreateRequest, Provider, ProviderError
from control.capacity.providers.health import ProviderHealth
from control.db import events
from control.db.store import Row, Store, fetch_one
from control.keyring import Keyring
from control.settings import Settings
from control.users import records
from control.users.placement import Demand, Room
from control.users.plans import plan_of
from control.workers import registration, trust
from shared.backoff import backoff_delay

log = logging.getLogger(__name__)
ORPHAN_SWEEPS = 3
PAIR_COOLDOWN = 600.0
RETRY_BASE = 5.0  # seconds: first backoff after a failed call for one resource
RETRY_CAP = 300.0
ORPHAN_DELETES_PER_SWEEP = 5
ORPHAN_BUDGET_RESERVE = 100  # provider requests left for creates before a sweep deletes
SWEEP_KEY = "orphan-sweep"  # the sweep's listing backs off like any resource
UserDataRenderer = Callable[[str, str], str]  # (server id, bootstrap token) -> user data


@dataclass
class Retry:
    failures: int
    not_before: float  # epoch seconds


@dataclass
class ScalerState:
    """What the autoscaler remembers between runs (in memory: a restart only makes it
    more careful, e.g. orphan counts start again from zero)."""

    paused_until: float = 0.0
    transient_failures: int = 0
    pair_cooldown: dict[tuple[str, str], float] = field(default_factory=dict)
    orphan_sightings: dict[str, int] = field(default_factory=dict)
    held_back: int = 0  # demand the caps held back in the last run (a metric)
    alert: str | None = None
    retries: dict[str, Retry] = field(default_factory=dict)  # per resource, after a failure
    runs: int = 0  # runs done since start (coalesced triggers do not add one)


class Scaler:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        keyring: Keyring,
        provider: Provider,
        render_user_data: UserDataRenderer,
        notify: Callable[..., None],
        health: ProviderHealth | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.keyring = keyring
        self.provider = provider
        self.render_user_data = render_user_data
        self.notify = notify
        self.state = ScalerState()
        self.reserve = records.Reserve(settings.system_reserve_mb, settings.system_reserve_cpus)
        self.health = health or ProviderHealth(state="ok", detail="")
        self._lock = asyncio.Lock()
        self._queued: asyncio.Future[None] | None = None  # the run waiting behind this one
        self._sweep_wanted = False
        limit = provider.max_servers
        self.max_servers = (
            min(settings.max_servers, limit) if limit is not None else settings.max_servers
        )
        self.labels = {"managed-by": "clawfleet", "clawfleet-cluster": settings.cluster_name}

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

    async def _run_steps(self, sweep: bool) -> None:
        self.state.runs += 1
        # Placement first, every run: a safety net for any room a trigger missed.
        steps = [self._place_pending, self._expire_provisioning, self._delete_dead, self._drain]
        if self.health.usable:  # creates need the validated catalogue; deletes do not
            steps = [
                self._place_pending,
                self._expire_provisioning,
                self._delete_dead,
                self._retry_unconfirmed,
                self._drain,
                self._scale_up,
                self._scale_down,
            ]
        for step in steps:
            try:
                await step()
            except ProviderError as exc:
                log.warning(
                    "autoscaler step %s: %s; the next run retries", step.__name__, _said(exc)
                )
            except Exception:
                log.exception("autoscaler step %s failed; the next run retries", step.__name__)
        if sweep:
            try:
                await self._sweep_orphans()
            except Exception:
                log.exception("orphan sweep failed; counts kept")

    # --- helpers -------------------------------------------------------------------
    def _due(self, key: str, now: float) -> bool:
        retry = self.state.retries.get(key)
        return retry is None or now >= retry.not_before

    def _failed(self, key: str, what: str, exc: ProviderError) -> None:
        """One log line, and no call for `key` before its backoff has passed."""
        previous = self.state.retries.get(key)
        failures = previous.failures + 1 if previous else 1
        delay = backoff_delay(failures - 1, base=RETRY_BASE, cap=RETRY_CAP, rand=random.random())
        if exc.kind == "rate_limited":  # not this resource's fault: wait for the bucket only
            delay = exc.retry_after if exc.retry_after is not None else 1.0
        self.state.retries[key] = Retry(failures, time.time() + delay)
        log.warning("autoscaler: %s: %s; next try in %.1f s", what, _said(exc), delay)

    def _succeeded(self, key: str) -> None:
        self.state.retries.pop(key, None)

    async def _event(self, kind: str, message: str, server_id: str | None = None) -> None:
        async def apply(conn: aiosqlite.Connection) -> None:
            await events.record(conn, kind, message, server_id=server_id)

        await self.store.write(apply)

    async def _set_status(self, server_id: str, status: str, kind: str, reason: str) -> None:
        now = time.time()

        async def apply(conn: aiosqlite.Connection) -> None:
            extra = ", deleted_at = ?" if status == "deleted" else ""
            params: tuple[object, ...] = (
                (status, now, now, server_id) if extra else (status, now, server_id)
            )
            await conn.execute(
                f"UPDATE servers SET status = ?, status_changed_at = ?{extra} WHERE id = ?",
                params,
            )
            if status in registration.RETIRED_STATUSES:
                # Its user data still carries a bootstrap token: it must not register.
                await registration.revoke_tokens(conn, server_id, now)
            await events.record(conn, kind, reason, server_id=server_id, at=now)

        await self.store.write(apply)

    async def _delete_at_provider(self, row: Row, kind: str, reason: str) -> bool:
        """Deletes a server we know; the row is marked `deleting` first so a crash
        mid-way is finished by the next run. False when the delete failed or is not due
        (the row stays `deleting`, retried after its backoff)."""
        if not self._due(row["id"], time.time()):
            return False
        if row["status"] != "deleting":
            await self._set_status(row["id"], "deleting", kind, reason)
        if row["provider_id"]:
            try:
                await self.provider.delete(row["provider_id"])
            except ProviderError as exc:
                self._failed(row["id"], f"delete of {row['name']}", exc)
                return False
            self._succeeded(row["id"])

        async def forget(conn: aiosqlite.Connection) -> None:
            # Suspended users' data goes with the server; on resume they are placed anew.
            await conn.execute(
                "UPDATE users SET server_id = NULL WHERE server_id = ? AND state = 'suspended'",
                (row["id"],),
            )

        await self.store.write(forget)
        await self._set_status(
            row["id"], "deleted", "server_deleted", f"deleted at {self.provider.name}"
        )
        return True

    async def _record_known(
        self, conn: aiosqlite.Connection, server_id: str, server_type: str
    ) -> None:
        """What the server's agent may claim at most: its type's resources."""
        try:
            st = self.provider.server_type(server_type)
        except Exception:  # a type the provider does not list: held to its first claim
            log.warning("server type %s unknown to %s", server_type, self.provider.name)
            return
        stated = trust.of_type(st.cpus, st.memory_mb, st.disk_gb)
        await trust.set_known(conn, server_id, stated, f"server type {server_type}")

    def _type_room(self, server_type: str, name: str) -> Room:
        st = self.provider.server_type(server_type)
        return Room(
            name,
            True,
            max(0, st.memory_mb - self.reserve.memory_mb),
            0,
            max(0.0, st.cpus - self.reserve.cpus),
            0.0,
        )

    def _unit(self) -> Demand:
        plan = self.settings.plans["default"]
        return Demand("unit", plan.memory_mb, plan.cpus)

    def _usable_pairs(self, now: float) -> list[tuple[str, str]]:
        return [p for p in self.provider.pairs() if self.state.pair_cooldown.get(p, 0) <= now]

    # --- steps ---------------------------------------------------------------------
    async def _expire_provisioning(self) -> None:
        now = time.time()
        rows = await self.store.fetch_all(
            "SELECT * FROM servers WHERE status = 'provisioning' AND origin = 'provider'"
        )
        for row in rows:
            if decisions.provision_expired(
                row["create_confirmed_at"],
                row["registered_at"],
                now,
                self.settings.provision_timeout,
            ):
                await self._delete_at_provider(
                    row,
                    "provision_timeout",
                    f"not registered {self.settings.provision_timeout:.0f}s after it was created; replacing it",
                )

    async def _delete_dead(self) -> None:
        for row in await self.store.fetch_all(
            "SELECT * FROM servers WHERE status IN ('dead', 'deleting')"
        ):
            reason = (
                "dead: its users were placed elsewhere"
                if row["status"] == "dead"
                else "finishing deletion"
            )
            await self._delete_at_provider(row, "server_deleting", reason)

    async def _retry_unconfirmed(self) -> None:
        """Creates whose outcome we never learned (timeout, crash): call create again;
        the provider adopts the server by name if it exists."""
        now = time.time()
        rows = await self.store.fetch_all(
            "SELECT * FROM servers WHERE status = 'provisioning' AND origin = 'provider' "
            "AND create_confirmed_at IS NULL"
        )
        for row in rows:
            if not self._due(row["id"], now):
                continue
            if now - row["create_requested_at"] > self.settings.provision_timeout:
                await self._settle_unknown(row)
                continue
            if now < self.state.paused_until:
                return
            await self._call_create(row["id"], row["name"], row["server_type"], row["location"])

    async def _settle_unknown(self, row: Row) -> None:
        """A create never confirmed in PROVISION_TIMEOUT: it keeps counting against
        MAX_SERVERS until the provider definitely answers whether a server carries its
        id label (a failed look-up is no answer)."""
        try:
            found = await self.provider.list({**self.labels, "clawfleet-server": row["id"]})
        except ProviderError as exc:
            self._failed(row["id"], f"look-up of unconfirmed {row['name']}", exc)
            return
        self._succeeded(row["id"])
        if not found:
            await self._set_status(
                row["id"],
                "deleted",
                "create_abandoned",
                f"create never confirmed and {self.provider.name} has no such server",
            )
            return
        server = found[0]
        await self._confirm(
            row["id"],
            server.provider_id,
            server.public_ip,
            server.server_type or row["server_type"],
            server.location or row["location"],
        )

    async def _place_pending(self) -> None:
        result = await records.place_pending(self.store, self.settings.plans, self.reserve)
        self.notify(*result.touched_servers)

    async def _held(self) -> dict[str, decisions.HeldData]:
        rows = await self.store.fetch_all(records.HELD_DATA_SQL)
        return decisions.held_by_server((r["holder"], r["kind"], r["purge_after"]) for r in rows)

    async def _drain(self) -> None:
        plans = self.settings.plans
        held = await self._held()
        for server in await self.store.fetch_all(
            "SELECT * FROM servers WHERE draining = 1 AND status IN ('active', 'unhealthy')"
        ):
            holders = await self.store.fetch_all(
                "SELECT id, plan, server_id, moving_from FROM users WHERE "
                "(server_id = ? AND state IN ('provisioning', 'running')) OR moving_from = ?",
                (server["id"], server["id"]),
            )
            action = decisions.drain_action(
                len(holders),
                any(h["moving_from"] == server["id"] for h in holders),
                decisions.kept_because(held.get(server["id"])),
            )
            if action == "delete":
                await self._delete_at_provider(server, "server_drained", "drained: no users left")
            if action != "move":
                continue  # kept: its disk holds users' data; wait: one move at a time
            user = holders[0]
            plan = plan_of(plans, user["plan"])
            await self._move(
                user["id"], server["id"], Demand(user["id"], plan.memory_mb, plan.cpus)
            )

    async def _move(self, user_id: str, source: str, demand: Demand) -> None:
        async def apply(conn: aiosqlite.Connection) -> str | None:
            return await records.start_move(
                conn, self.settings.plans, self.reserve, user_id, None, f"draining {source}"
            )

        target = await self.store.write(apply)
        if target:
            self.notify(target, source)

    async def _snapshot(self) -> tuple[list[Demand], list[Room], list[Room], int]:
        plans = self.settings.plans
        pending = [
            Demand(r["id"], plan_of(plans, r["plan"]).memory_mb, plan_of(plans, r["plan"]).cpus)
            for r in await self.store.fetch_all(
                "SELECT u.id, u.plan FROM users u LEFT JOIN servers s ON s.id = u.server_id "
                "WHERE (u.state = 'pending' AND u.error IS NULL) OR (s.draining = 1 AND u.moving_from IS NULL "
                "AND u.state IN ('provisioning', 'running')) ORDER BY u.created_at, u.id"
            )
        ]

        async def read(conn: aiosqlite.Connection) -> list[Room]:
            return await records.rooms(conn, plans, self.reserve)

        active = await self.store.write(read)
        on_the_way = [
            self._type_room(r["server_type"] or "local", r["id"])
            for r in await self.store.fetch_all(
                "SELECT id, server_type FROM servers WHERE status = 'provisioning' AND origin = 'provider'"
            )
        ]
        # Dead servers still exist at the provider until their delete succeeded.
        row = await self.store.fetch_one(
            "SELECT COUNT(*) AS n FROM servers WHERE status != 'deleted'"
        )
        return pending, active, on_the_way, int(row["n"]) if row else 0

    async def _scale_up(self) -> None:
        now = time.time()
        pairs = self._usable_pairs(now)
        if now < self.state.paused_until or not pairs:
            return
        pending, active, on_the_way, servers_now = await self._snapshot()
        need = decisions.servers_needed(
            pending,
            active,
            on_the_way,
            self._type_room(pairs[0][0], "new"),
            self._unit(),
            self.settings.warm_headroom,
        )
        for user_id in need.infeasible:
            await self._event(
                "user_unplaceable", f"user {user_id}: its plan fits no server type {pairs[0][0]}"
            )
        # Sighted orphans exist too (e.g. a create that took effect after it was given up).
        servers_now += len(self.state.orphan_sightings)
        capped = decisions.cap_creates(
            need.servers, servers_now, self.max_servers, self.settings.max_creates_per_run
        )
        self.state.held_back = capped.held_back
        if capped.reason:
            log.warning(
                "autoscaler: %s holds back %d server(s) of demand (%d pending users)",
                capped.reason,
                capped.held_back,
                len(pending),
            )
            await self._event(
                "scale_capped",
                f"{capped.reason} holds back {capped.held_back} server(s); "
                f"{len(pending)} user(s) pending",
            )
        for _ in range(capped.create):
            if not await self._create_one(
                f"{len(pending)} pending user(s), headroom {self.settings.warm_headroom}"
            ):
                break

    async def _create_one(self, reason: str) -> bool:
        now = time.time()
        pairs = self._usable_pairs(now)
        if not pairs:
            return False
        server_type, location = pairs[0]
        server_id = registration.new_server_id()
        name = f"clawfleet-{self.settings.cluster_name}-{server_id.removeprefix('srv-')}"

        async def record(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "INSERT INTO servers (id, name, status, origin, provider, server_type, location, "
                "created_at, status_changed_at, create_requested_at) "
                "VALUES (?, ?, 'provisioning', 'provider', ?, ?, ?, ?, ?, ?)",
                (server_id, name, self.provider.name, server_type, location, now, now, now),
            )
            await self._record_known(conn, server_id, server_type)
            await events.record(
                conn,
                "scale_up",
                f"creating {name} ({server_type} in {location}): {reason}",
                server_id=server_id,
                at=now,
            )

        await self.store.write(record)
        return await self._call_create(server_id, name, server_type, location)

    async def _bootstrap_token(self, server_id: str) -> str:
        row = await self.store.fetch_one(
            "SELECT id FROM bootstrap_tokens WHERE server_id = ?", (server_id,)
        )
        if row is not None:
            return f"{row['id']}.{self.keyring.bootstrap_secret(row['id'])}"
        ttl = max(self.settings.bootstrap_token_ttl, self.settings.provision_timeout + 60)
        minted = await registration.mint_token(self.store, self.keyring, ttl, server_id=server_id)
        return minted.token

    async def _call_create(
        self, server_id: str, name: str, server_type: str, location: str
    ) -> bool:
        token = await self._bootstrap_token(server_id)
        user_data = self.render_user_data(server_id, token)
        # The user-data hash tells, on the provider's side, which bootstrap a server got.
        labels = {
            **self.labels,
            "clawfleet-server": server_id,
            "clawfleet-userdata": user_data_hash(user_data),
        }
        pair: tuple[str, str] | None = (server_type, location)
        tried: set[tuple[str, str]] = set()
        while pair is not None:
            tried.add(pair)
            request = CreateRequest(server_id, name, pair[0], pair[1], user_data, labels)
            try:
                created = await self.provider.create(request)
            except ProviderError as exc:
                if not await self._handle_create_error(server_id, pair, exc):
                    return False
                # Next pair in preference order that is neither cooling down nor tried.
                pair = next((p for p in self._usable_pairs(time.time()) if p not in tried), None)
                continue
            # An adopted server may sit on an earlier pair than this attempt's.
            await self._confirm(
                server_id,
                created.provider_id,
                created.public_ip,
                created.server_type or pair[0],
                created.location or pair[1],
            )
            self.state.transient_failures = 0
            self._succeeded(server_id)
            return True
        return False

    async def _handle_create_error(
        self, server_id: str, pair: tuple[str, str], exc: ProviderError
    ) -> bool:
        """Records the failure; True when the next pair should be tried."""
        plan = decisions.retry_decision(exc.kind, self.state.transient_failures, exc.retry_after)
        if exc.kind == "transient":
            self.state.transient_failures += 1
        if exc.kind in ("transient", "rate_limited"):  # outcome unknown: retried when due
            self._failed(server_id, f"create of {server_id} ({pair[0]} in {pair[1]})", exc)
        now = time.time()
        if plan.next_pair:
            self.state.pair_cooldown[pair] = now + PAIR_COOLDOWN
        if plan.pause_scale_up:
            self.state.paused_until = max(self.state.paused_until, now + plan.pause_scale_up)
        if plan.alert:
            self.state.alert = f"{exc.kind}: {exc}"
            log.error("autoscaler needs the operator: %s", exc)
        await self._event("create_failed", f"{pair[0]} in {pair[1]}: {exc} [{exc.kind}]", server_id)
        if exc.kind in ("unavailable", "limit", "invalid"):
            # The provider refused: no server exists under this name, so nothing to adopt.
            if not plan.next_pair or not self._usable_pairs(now):
                await self._set_status(
                    server_id, "deleted", "create_abandoned", f"provider refused: {exc.kind}"
                )
        return plan.next_pair and bool(self._usable_pairs(now))

    async def _confirm(
        self, server_id: str, provider_id: str, ip: str | None, st: str, loc: str
    ) -> None:
        now = time.time()

        async def apply(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "UPDATE servers SET provider_id = ?, public_ip = ?, server_type = ?, location = ?, "
                "create_confirmed_at = ? WHERE id = ?",
                (provider_id, ip, st, loc, now, server_id),
            )
            await self._record_known(conn, server_id, st)  # an adopted server's own type
            await events.record(
                conn,
                "server_created",
                f"created at {self.provider.name} as {provider_id}",
                server_id=server_id,
                at=now,
            )

        await self.store.write(apply)

    async def _scale_down(self) -> None:
        now = time.time()
        pending, active, _, servers_now = await self._snapshot()
        if pending:
            return
        await self._track_empty(now)
        rows = await self.store.fetch_all(
            "SELECT id, empty_since, create_confirmed_at, registered_at, created_at FROM servers "
            "WHERE status = 'active' AND origin = 'provider' AND empty_since IS NOT NULL"
        )
        unit = self._unit()
        by_id = {r.server_id: r for r in active}
        held = await self._held()
        idle = [
            decisions.IdleServer(
                r["id"],
                r["empty_since"],
                r["create_confirmed_at"] or r["registered_at"] or r["created_at"],
                decisions.units(by_id[r["id"]], unit) if r["id"] in by_id else 0,
                decisions.kept_because(held.get(r["id"])),
            )
            for r in rows
        ]
        chosen = decisions.idle_to_delete(
            idle,
            now=now,
            idle_after=self.settings.scale_down_idle,
            servers_now=servers_now,
            min_servers=self.settings.min_servers,
            fleet_free_units=sum(decisions.units(r, unit) for r in active),
            headroom=self.settings.warm_headroom,
            bills_hourly=self.provider.bills_hourly,
            billing_window=billing_window(self.settings.autoscale_interval),
        )
        for server_id in chosen:
            if await self._cordon_if_empty(server_id):
                row = await self.store.fetch_one("SELECT * FROM servers WHERE id = ?", (server_id,))
                if row is not None:
                    idle_for = now - row["empty_since"] if row["empty_since"] else 0.0
                    await self._delete_at_provider(row, "scale_down", f"empty for {idle_for:.0f}s")

    async def _track_empty(self, now: float) -> None:
        async def apply(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                f"UPDATE servers SET empty_since = NULL WHERE empty_since IS NOT NULL "
                f"AND id IN (SELECT holder FROM ({records.HOLDERS_SQL}))"
            )
            await conn.execute(
                f"UPDATE servers SET empty_since = ? WHERE status = 'active' AND empty_since IS NULL "
                f"AND id NOT IN (SELECT holder FROM ({records.HOLDERS_SQL}))",
                (now,),
            )

        await self.store.write(apply)

    async def _cordon_if_empty(self, server_id: str) -> bool:
        """Cordons in the same transaction that checks emptiness, so no user can be
        placed between the decision and the deletion."""

        async def apply(conn: aiosqlite.Connection) -> bool:
            busy = await fetch_one(
                conn,
                f"SELECT holder FROM ({records.HOLDERS_SQL}) WHERE holder = ? UNION ALL "
                f"SELECT holder FROM ({records.HELD_DATA_SQL}) WHERE holder = ?",
                (server_id, server_id),
            )
            if busy:
                await conn.execute(
                    "UPDATE servers SET empty_since = NULL WHERE id = ?", (server_id,)
                )
                return False
            await conn.execute("UPDATE servers SET cordoned = 1 WHERE id = ?", (server_id,))
            return True

        return await self.store.write(apply)

    async def _sweep_orphans(self) -> None:
        if not self._due(SWEEP_KEY, time.time()):
            return
        try:
            seen = await self.provider.list(self.labels)
        except ProviderError as exc:
            self._failed(SWEEP_KEY, "orphan sweep: listing servers (nothing deleted)", exc)
            return
        self._succeeded(SWEEP_KEY)
        known = {
            str(key)
            for r in await self.store.fetch_all(
                "SELECT provider_id, name FROM servers WHERE status != 'deleted'"
            )
            for key in (r["provider_id"], r["name"])
            if key
        }
        sightings: dict[str, int] = {}
        budget = self._orphan_budget()
        for server in seen:
            if any(server.labels.get(k) != v for k, v in self.labels.items()):
                continue  # never a server without both labels
            if server.provider_id in known or server.name in known:
                continue
            count = sightings[server.provider_id] = (
                self.state.orphan_sightings.get(server.provider_id, 0) + 1
            )
            if count < ORPHAN_SWEEPS or budget <= 0:
                continue
            if not self._due(server.provider_id, time.time()):
                continue
            budget -= 1
            try:
                await self.provider.delete(server.provider_id)
            except ProviderError as exc:
                self._failed(server.provider_id, f"delete of orphan {server.name}", exc)
                continue
            self._succeeded(server.provider_id)
            sightings.pop(server.provider_id)
            await self._event(
                "orphan_deleted",
                f"{server.name} ({server.provider_id}) carried our labels "
                f"but was unknown to the database; seen in {count} sweeps",
            )
        self.state.orphan_sightings = sightings

    def _orphan_budget(self) -> int:
        """Orphan deletes this sweep may make: a few, and none that would spend the
        requests kept for creates (when the provider reports its budget)."""
        remaining = getattr(self.provider, "rate_limit_remaining", None)
        if not isinstance(remaining, int):
            return ORPHAN_DELETES_PER_SWEEP
        return max(0, min(ORPHAN_DELETES_PER_SWEEP, remaining - ORPHAN_BUDGET_RESERVE))


def billing_window(interval: float) -> float:
    """How close to the end of a billed hour an idle server may be deleted: wide enough
    that a few autoscaler runs fall inside it, never more than half the hour."""
    return min(decisions.HOUR / 2, max(300.0, 3 * interval))


def _said(exc: ProviderError) -> str:
    """An expected provider error as one log line's worth: message, kind, code, id."""
    return f"{exc} [{exc.kind}]"
