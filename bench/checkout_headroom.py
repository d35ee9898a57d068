"""Capacity ahead of payment (issue 15, point 6): a replayed trace of sign-up checkouts
and payments through the autoscaler's real decisions, with and without open checkouts
counted in the warm headroom. Prints one JSON line per (rate, boot time, policy).

The trace (deterministic: `--seed`):
- checkouts open as a Poisson process whose rate follows the day (`--rate` per hour on
  average, times 1 + 0.6 sin(2 pi (t - 6 h) / 24 h): quiet at night, busy in the
  afternoon), for `--days`;
- a checkout is paid with probability `--conversion` after a log-normal delay (median
  `--pay-median` seconds, sigma 0.8), cut at Stripe's 30 minutes (an unpaid session
  expires); the rest are abandoned and count, like open ones, until their 30 minutes end;
- 80 % of buyers take the default plan (1024 MB, 0.5 CPU), 20 % a plan twice its size;
- a paying customer stays an exponential time (mean 60 days), then cancels.

The fleet: cpx22 servers less the system reserve (3584 MB, 1.75 CPU: three default
users), created `--boot` seconds before their agent registers and takes users (a
simulated boot time; docs/benchmarks.md says where the figure comes from). The
autoscaler runs every AUTOSCALE_INTERVAL (20 s) and at once when a payment finds no
room (the control plane's `on_pending`), with `servers_needed`, `expected_headroom`
and `idle_to_delete` from control/capacity/decisions.py and `place` from
control/users/placement.py: WARM_HEADROOM 2, MAX_CREATES_PER_RUN 2, SCALE_DOWN_IDLE
600 s, deletions near the end of a billed hour. Open checkouts count for
CHECKOUT_HEADROOM_MINUTES (30) when the policy says so.

A payment "waits for a new server" when, as its webhook arrives, no registered server
has room for it: it waits for a booting or a new one.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
from dataclasses import dataclass, field

from control.capacity.decisions import (
    IdleServer,
    expected_headroom,
    idle_to_delete,
    servers_needed,
    units,
)
from control.users.placement import Demand, Room, place

DAY = 86400.0
CHECKOUT_WINDOW = 30 * 60.0  # Stripe's shortest session, PORTAL_CHECKOUT_MINUTES
INTERVAL = 20.0  # AUTOSCALE_INTERVAL
WARM_HEADROOM = 2
MAX_CREATES_PER_RUN = 2
IDLE_AFTER = 600.0
BILLING_WINDOW = 300.0
SERVER = Room("new", True, 3584, 0, 1.75, 0.0)
PLANS = {"default": Demand("default", 1024, 0.5), "big": Demand("big", 2048, 1.0)}
UNIT = PLANS["default"]


@dataclass(frozen=True)
class Checkout:
    opened: float
    plan: str
    paid: float | None  # None: abandoned
    leaves: float  # when the customer cancels (if paid)


def trace(
    rate: float, days: float, conversion: float, pay_median: float, seed: int
) -> list[Checkout]:
    rng = random.Random(seed)
    peak = rate * 1.6 / 3600.0  # the busiest moment's rate, per second (thinning)
    t, out = 0.0, list[Checkout]()
    while True:
        t += rng.expovariate(peak)
        if t >= days * DAY:
            return out
        shape = 1 + 0.6 * math.sin(2 * math.pi * (t - 6 * 3600) / DAY)
        if rng.random() > shape / 1.6:
            continue
        plan = "big" if rng.random() < 0.2 else "default"
        delay = pay_median * math.exp(rng.gauss(0.0, 0.8))
        paid = t + delay if rng.random() < conversion and delay < CHECKOUT_WINDOW else None
        leaves = (paid or t) + rng.expovariate(1 / (60 * DAY))
        out.append(Checkout(t, plan, paid, leaves))


@dataclass
class Server:
    id: str
    created: float
    ready: float
    users: dict[str, str] = field(default_factory=dict)  # user -> plan
    empty_since: float | None = None

    def room(self, now: float) -> Room:
        mem = sum(PLANS[p].memory_mb for p in self.users.values())
        cpus = sum(PLANS[p].cpus for p in self.users.values())
        return Room(
            self.id, now >= self.ready, SERVER.memory_total_mb, mem, SERVER.cpus_total, cpus
        )


@dataclass
class Fleet:
    count_checkouts: bool
    boot: float
    servers: dict[str, Server] = field(default_factory=dict)
    roomy: set[str] = field(default_factory=set)  # servers with room for a default user
    pending: dict[str, str] = field(default_factory=dict)  # user -> plan, in arrival order
    where: dict[str, str] = field(default_factory=dict)  # user -> server
    open: list[Checkout] = field(default_factory=list)
    made: int = 0
    server_seconds: float = 0.0
    waits: list[float] = field(default_factory=list)
    waiting_since: dict[str, float] = field(default_factory=dict)

    def rooms(self, now: float) -> list[Room]:
        """Registered servers that still have room (full ones add nothing to a decision)."""
        rooms = (self.servers[i].room(now) for i in sorted(self.roomy))
        return [r for r in rooms if r.accepts_work]

    def update(self, server: Server, now: float) -> None:
        if units(server.room(math.inf), UNIT) > 0:
            self.roomy.add(server.id)
        else:
            self.roomy.discard(server.id)
        server.empty_since = (server.empty_since or now) if not server.users else None

    def place_pending(self, now: float) -> None:
        demands = [Demand(u, PLANS[p].memory_mb, PLANS[p].cpus) for u, p in self.pending.items()]
        placed, _ = place(demands, self.rooms(now))
        for user, server_id in placed.items():
            server = self.servers[server_id]
            server.users[user] = self.pending.pop(user)
            self.where[user] = server_id
            self.update(server, now)
            self.waits.append(now - self.waiting_since.pop(user))

    def leave(self, user: str, now: float) -> None:
        server_id = self.where.pop(user, None)
        if server_id in self.servers:
            del self.servers[server_id].users[user]
            self.update(self.servers[server_id], now)

    def headroom(self, now: float) -> int:
        self.open = [c for c in self.open if now < c.opened + CHECKOUT_WINDOW]
        self.open = [c for c in self.open if c.paid is None or c.paid > now]
        expected: dict[str, int] = {}
        for c in self.open if self.count_checkouts else []:
            expected[c.plan] = expected.get(c.plan, 0) + 1
        sizes = [(PLANS[p], n) for p, n in expected.items()]
        return WARM_HEADROOM + expected_headroom(sizes, UNIT)

    def autoscale(self, now: float) -> list[float]:
        """One run (scale up, then down when nobody waits); when its new servers are up."""
        headroom = self.headroom(now)
        booting = [SERVER for i in self.roomy if now < self.servers[i].ready]
        demands = [Demand(u, PLANS[p].memory_mb, PLANS[p].cpus) for u, p in self.pending.items()]
        active = self.rooms(now)
        need = servers_needed(demands, active, booting, SERVER, UNIT, headroom)
        ready = []
        for _ in range(min(need.servers, MAX_CREATES_PER_RUN)):
            self.made += 1
            server = Server(f"s{self.made:06d}", now, now + self.boot)
            self.servers[server.id] = server
            self.roomy.add(server.id)
            ready.append(server.ready)
        if not self.pending:
            self.scale_down(now, active, headroom)
        return ready

    def scale_down(self, now: float, active: list[Room], headroom: int) -> None:
        for room in active:  # a registered server with nobody on it is empty from now
            server = self.servers[room.server_id]
            if not server.users and server.empty_since is None:
                server.empty_since = now
        idle = [
            IdleServer(r.server_id, empty, self.servers[r.server_id].created, units(r, UNIT))
            for r in active
            if (empty := self.servers[r.server_id].empty_since) is not None
        ]
        chosen = idle_to_delete(
            idle,
            now=now,
            idle_after=IDLE_AFTER,
            servers_now=len(self.servers),
            min_servers=0,
            fleet_free_units=sum(units(r, UNIT) for r in active),
            headroom=headroom,
            bills_hourly=True,
            billing_window=BILLING_WINDOW,
        )
        for server_id in chosen:
            gone = self.servers.pop(server_id)
            self.roomy.discard(server_id)
            self.server_seconds += now - gone.created


def events_of(checkouts: list[Checkout], horizon: float) -> list[tuple[float, int, str, int]]:
    """(time, order within the same instant, kind, checkout index), as a heap."""
    events = [(c.opened, 1, "open", i) for i, c in enumerate(checkouts)]
    for i, c in enumerate(checkouts):
        if c.paid is not None:
            events += [(c.paid, 2, "pay", i), (c.leaves, 3, "leave", i)]
    events += [(k * INTERVAL, 0, "tick", -1) for k in range(int(horizon // INTERVAL) + 1)]
    heapq.heapify(events)
    return events


def replay(checkouts: list[Checkout], count_checkouts: bool, boot: float) -> dict[str, float]:
    fleet = Fleet(count_checkouts, boot)
    horizon = max(c.opened for c in checkouts) + CHECKOUT_WINDOW
    events = events_of(checkouts, horizon)
    waited = paid = 0
    while events and events[0][0] <= horizon:
        now, _, kind, i = heapq.heappop(events)
        if kind == "open":
            fleet.open.append(checkouts[i])
        elif kind == "ready":
            fleet.place_pending(now)
        elif kind == "leave":
            fleet.leave(f"u{i}", now)
        elif kind == "pay":
            paid += 1
            fleet.pending[f"u{i}"] = checkouts[i].plan
            fleet.waiting_since[f"u{i}"] = now
            fleet.place_pending(now)
            waited += f"u{i}" in fleet.pending
        if kind in ("tick", "pay"):  # a payment left pending triggers a run at once
            for ready in fleet.autoscale(now):
                heapq.heappush(events, (ready, 0, "ready", -1))
    fleet.server_seconds += sum(horizon - s.created for s in fleet.servers.values())
    long_waits = sorted(w for w in fleet.waits if w > 0)
    return {
        "payments": paid,
        "waited": waited,
        "waited_share": round(waited / paid, 4) if paid else 0.0,
        "wait_p50_s": round(long_waits[len(long_waits) // 2], 1) if long_waits else 0.0,
        "wait_max_s": round(long_waits[-1], 1) if long_waits else 0.0,
        "servers_created": fleet.made,
        "server_hours": round(fleet.server_seconds / 3600, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="1,4,20", help="checkouts per hour on average")
    parser.add_argument("--boots", default="120,240,420", help="simulated boot times, seconds")
    parser.add_argument("--days", type=float, default=14.0)
    parser.add_argument("--conversion", type=float, default=0.6)
    parser.add_argument("--pay-median", type=float, default=150.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for rate in (float(r) for r in args.rates.split(",")):
        checkouts = trace(rate, args.days, args.conversion, args.pay_median, args.seed)
        for boot in (float(b) for b in args.boots.split(",")):
            for counted in (False, True):
                result = replay(checkouts, counted, boot)
                row = {"rate_per_hour": rate, "boot_s": boot, "checkouts_counted": counted}
                print(json.dumps(row | result))


if __name__ == "__main__":
    main()
