"""Creating and deleting servers at the provider, as the autoscaler's steps do it.

Contract:
- A create is recorded (server row + bootstrap token) BEFORE the provider is called,
  under a deterministic name, so a crash or timeout at any point is repaired by a
  later run adopting the server by name, never by creating a second one. Its user
  data comes from the renderer given at construction (control/workers/bootstrap.py).
- A delete marks the row `deleting` first, so a crash mid-way is finished by the next
  run; retiring a server revokes its bootstrap tokens (control/workers/servers.py).
- Every provider call that failed has its own backoff per resource (our server id, or
  the provider's id for orphans; `shared.backoff.backoff_delay`, or the rate-limit wait
  for a 429): no run, however triggered, calls again for that resource before it is
  due. An expected provider error is one log line with its kind, code and correlation
  id, never a traceback.
- What the autoscaler remembers between runs is `ScalerState`, in memory.
- `headroom()` is the room the fleet keeps free: WARM_HEADROOM plus what the open
  checkouts of the last CHECKOUT_HEADROOM_MINUTES will need for their plans (issue 15),
  read through the `expected` function the app gives (the portal's `open_checkouts`:
  capacity may not import the portal); without one, WARM_HEADROOM alone.
- Every step reads "now" from `Provisioner.clock` (epoch seconds, `time.time` unless a
  test injects one), so backoffs and pauses can be passed without waiting for them.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiosqlite

from cloud_init.render import user_data_hash
from control.capacity import decisions
from control.capacity.providers.base import CreateRequest, Provider, ProviderError
from control.db import events
from control.db.store import Row, Store
from control.keyring import Keyring
from control.settings import Settings
from control.users import records
from control.users.features import fleet_needs
from control.users.placement import Demand, Room
from control.users.plans import plan_of
from control.users.room_index import RoomIndex
from control.users.rooms import Reserve, rooms
from control.workers import servers, tokens, trust
from control.workers.bootstrap import UserDataRenderer
from shared.backoff import backoff_delay

log = logging.getLogger(__name__)
PAIR_COOLDOWN = 600.0
RETRY_BASE = 5.0  # seconds: first backoff after a failed call for one resource
RETRY_CAP = 300.0
# (conn, since, now) -> (plan, count) of the checkouts open at `now` that were created
# at or after `since` (epoch seconds): demand about to arrive (control/portal/checkouts.py
# `open_checkouts`).
ExpectedDemand = Callable[[aiosqlite.Connection, float, float], Awaitable[list[tuple[str, int]]]]


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
    volume_sightings: dict[str, int] = field(default_factory=dict)  # orphan volumes
    held_back: int = 0  # demand the caps held back in the last run (a metric)
    alert: str | None = None
    retries: dict[str, Retry] = field(default_factory=dict)  # per resource, after a failure
    runs: int = 0  # runs done since start (coalesced triggers do not add one)


def said(exc: ProviderError) -> str:
    """An expected provider error as one log line's worth: message, kind, code, id."""
    return f"{exc} [{exc.kind}]"


class Provisioner:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        keyring: Keyring,
        provider: Provider,
        render_user_data: UserDataRenderer,
        notify: Callable[..., None],
        clock: Callable[[], float] = time.time,
        expected: ExpectedDemand | None = None,
        room_index: RoomIndex | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.keyring = keyring
        self.provider = provider
        self.render_user_data = render_user_data
        self.notify = notify
        self.clock = clock  # epoch seconds for every step's "now"; tests inject one
        self.expected = expected
        # The Fleet's room index (control/users/room_index.py), when the app gives it.
        self.room_index = room_index
        self.state = ScalerState()
        self.reserve = Reserve(
            settings.system_reserve_mb, settings.system_reserve_cpus, settings.user_volumes
        )
        # Agent features users need: a server whose agent lacks them has no room for them.
        self.needs = fleet_needs(settings)
        limit = provider.max_servers
        self.max_servers = (
            min(settings.max_servers, limit) if limit is not None else settings.max_servers
        )
        self.labels = {"managed-by": "clawfleet", "clawfleet-cluster": settings.cluster_name}

    # --- backoff per resource --------------------------------------------------------
    def due(self, key: str, now: float) -> bool:
        retry = self.state.retries.get(key)
        return retry is None or now >= retry.not_before

    def failed(self, key: str, what: str, exc: ProviderError) -> None:
        """One log line, and no call for `key` before its backoff has passed."""
        previous = self.state.retries.get(key)
        failures = previous.failures + 1 if previous else 1
        delay = backoff_delay(failures - 1, base=RETRY_BASE, cap=RETRY_CAP, rand=random.random())
        if exc.kind == "rate_limited":  # not this resource's fault: wait for the bucket only
            delay = exc.retry_after if exc.retry_after is not None else 1.0
        self.state.retries[key] = Retry(failures, self.clock() + delay)
        log.warning("autoscaler: %s: %s; next try in %.1f s", what, said(exc), delay)

    def succeeded(self, key: str) -> None:
        self.state.retries.pop(key, None)

    # --- what the fleet looks like to the decisions ----------------------------------
    def type_room(self, server_type: str, name: str, location: str | None = None) -> Room:
        st = self.provider.server_type(server_type)
        return Room(
            name,
            True,
            max(0, st.memory_mb - self.reserve.memory_mb),
            0,
            max(0.0, st.cpus - self.reserve.cpus),
            0.0,
            location=location,
        )

    def unit(self) -> Demand:
        plan = self.settings.plans["default"]
        return Demand("unit", plan.memory_mb, plan.cpus)

    async def headroom(self) -> int:
        """WARM_HEADROOM plus the units open checkouts will take when they are paid."""
        window = self.settings.checkout_headroom_minutes * 60
        expected = self.expected
        if expected is None or window <= 0:
            return self.settings.warm_headroom
        now = self.clock()
        counts = await self.store.write(lambda conn: expected(conn, now - window, now))
        plans = self.settings.plans
        sizes = [
            (Demand(name, plan_of(plans, name).memory_mb, plan_of(plans, name).cpus), n)
            for name, n in counts
        ]
        return self.settings.warm_headroom + decisions.expected_headroom(sizes, self.unit())

    def usable_pairs(self, now: float) -> list[tuple[str, str]]:
        return [p for p in self.provider.pairs() if self.state.pair_cooldown.get(p, 0) <= now]

    async def snapshot(self) -> tuple[list[Demand], list[Room], list[Room], int]:
        """(users needing room, active rooms, rooms on the way, servers that exist)."""
        plans = self.settings.plans
        pending = [
            Demand(
                r["id"],
                plan_of(plans, r["plan"]).memory_mb,
                plan_of(plans, r["plan"]).cpus,
                # A user whose data is on a volume needs a server in the volume's location.
                location=r["location"],
                volume=self.reserve.volume_per_user or r["location"] is not None,
                features=self.needs,
            )
            for r in await self.store.fetch_all(
                "SELECT u.id, u.plan, v.location FROM users u "
                "LEFT JOIN servers s ON s.id = u.server_id "
                "LEFT JOIN volumes v ON v.user_id = u.id "
                "WHERE (u.state = 'pending' AND u.error IS NULL) OR (s.draining = 1 AND u.moving_from IS NULL "
                "AND u.state IN ('provisioning', 'running')) ORDER BY u.created_at, u.id"
            )
        ]

        async def read(conn: aiosqlite.Connection) -> list[Room]:
            return await rooms(conn, plans, self.reserve)

        index = self.room_index
        if index is not None:
            await index.synced()  # as of the last commit, as a read in a write would be
        active = index.rooms() if index and index.ready else await self.store.write(read)
        on_the_way = [
            self.type_room(r["server_type"] or "local", r["id"], r["location"])
            for r in await self.store.fetch_all(
                "SELECT id, server_type, location FROM servers "
                "WHERE status = 'provisioning' AND origin = 'provider'"
            )
        ]
        # Dead servers still exist at the provider until their delete succeeded.
        row = await self.store.fetch_one(
            "SELECT COUNT(*) AS n FROM servers WHERE status != 'deleted'"
        )
        return pending, active, on_the_way, int(row["n"]) if row else 0

    # --- recording ---------------------------------------------------------------------
    async def event(self, kind: str, message: str, server_id: str | None = None) -> None:
        async def apply(conn: aiosqlite.Connection) -> None:
            await events.record(conn, kind, message, server_id=server_id)

        await self.store.write(apply)

    async def set_status(self, server_id: str, status: str, kind: str, reason: str) -> None:
        now = self.clock()

        async def apply(conn: aiosqlite.Connection) -> None:
            await servers.set_status(conn, server_id, status, now)
            await events.record(conn, kind, reason, server_id=server_id, at=now)

        await self.store.write(apply)

    async def _record_typed(
        self,
        conn: aiosqlite.Connection,
        server_id: str,
        server_type: str,
        event: tuple[str, str],
        now: float,
    ) -> None:
        """Records what the server's agent may claim at most (its type's resources), then
        the event (kind, message) that says why, in the caller's transaction."""
        try:
            st = self.provider.server_type(server_type)
        except ProviderError:  # a type the provider does not list: held to its first claim
            log.warning("server type %s unknown to %s", server_type, self.provider.name)
        else:
            stated = trust.of_type(st.cpus, st.memory_mb, st.disk_gb)
            await servers.set_known(conn, server_id, stated, f"server type {server_type}")
        kind, message = event
        await events.record(conn, kind, message, server_id=server_id, at=now)

    # --- deleting ------------------------------------------------------------------------
    async def delete(self, row: Row, kind: str, reason: str) -> bool:
        """Deletes a server we know; the row is marked `deleting` first so a crash
        mid-way is finished by the next run. False when the delete failed or is not due
        (the row stays `deleting`, retried after its backoff)."""
        if not self.due(row["id"], self.clock()):
            return False
        if row["status"] != "deleting":
            await self.set_status(row["id"], "deleting", kind, reason)
        if row["provider_id"]:
            try:
                await self.provider.delete(row["provider_id"])
            except ProviderError as exc:
                self.failed(row["id"], f"delete of {row['name']}", exc)
                return False
            self.succeeded(row["id"])
        # Suspended users' data goes with the server; on resume they are placed anew.
        await self.store.write(lambda conn: records.forget_suspended_on(conn, row["id"]))
        await self.set_status(
            row["id"], "deleted", "server_deleted", f"deleted at {self.provider.name}"
        )
        return True

    # --- creating ------------------------------------------------------------------------
    async def create_one(self, reason: str, where: str | None = None) -> bool:
        """Creates one server, in location `where` when a waiting user's volume is there."""
        now = self.clock()
        pairs = [p for p in self.usable_pairs(now) if where is None or p[1] == where]
        if not pairs:
            if where is not None:
                log.warning("autoscaler: no usable server type in %s, where users wait", where)
            return False
        server_type, location = pairs[0]
        server_id = servers.new_server_id()
        name = f"clawfleet-{self.settings.cluster_name}-{server_id.removeprefix('srv-')}"

        async def record(conn: aiosqlite.Connection) -> None:
            await servers.insert_created(
                conn, server_id, name, self.provider.name, (server_type, location), now
            )
            message = f"creating {name} ({server_type} in {location}): {reason}"
            await self._record_typed(conn, server_id, server_type, ("scale_up", message), now)

        await self.store.write(record)
        return await self.call_create(server_id, name, server_type, location)

    async def call_create(self, server_id: str, name: str, server_type: str, location: str) -> bool:
        ttl = max(self.settings.bootstrap_token_ttl, self.settings.provision_timeout + 60)
        token = await tokens.for_server(self.store, self.keyring, server_id, ttl)
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
                pair = next((p for p in self.usable_pairs(self.clock()) if p not in tried), None)
                continue
            # An adopted server may sit on an earlier pair than this attempt's.
            adopted = (created.server_type or pair[0], created.location or pair[1])
            await self.confirm(server_id, created.provider_id, created.public_ip, adopted)
            self.state.transient_failures = 0
            self.succeeded(server_id)
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
            self.failed(server_id, f"create of {server_id} ({pair[0]} in {pair[1]})", exc)
        now = self.clock()
        if plan.next_pair:
            self.state.pair_cooldown[pair] = now + PAIR_COOLDOWN
        if plan.pause_scale_up:
            self.state.paused_until = max(self.state.paused_until, now + plan.pause_scale_up)
        if plan.alert:
            self.state.alert = f"{exc.kind}: {exc}"
            log.error("autoscaler needs the operator: %s", exc)
        await self.event("create_failed", f"{pair[0]} in {pair[1]}: {exc} [{exc.kind}]", server_id)
        if exc.kind in ("unavailable", "limit", "invalid"):
            # The provider refused: no server exists under this name, so nothing to adopt.
            if not plan.next_pair or not self.usable_pairs(now):
                await self.set_status(
                    server_id, "deleted", "create_abandoned", f"provider refused: {exc.kind}"
                )
        return plan.next_pair and bool(self.usable_pairs(now))

    async def confirm(
        self, server_id: str, provider_id: str, ip: str | None, pair: tuple[str, str]
    ) -> None:
        now = self.clock()

        async def apply(conn: aiosqlite.Connection) -> None:
            await servers.confirm_created(conn, server_id, provider_id, ip, pair, now)
            message = f"created at {self.provider.name} as {provider_id}"
            # An adopted server's own type, which may differ from the one asked for.
            await self._record_typed(conn, server_id, pair[0], ("server_created", message), now)

        await self.store.write(apply)
