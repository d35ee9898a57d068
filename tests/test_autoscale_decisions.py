"""Autoscaler decisions as parameter tables (control/capacity/decisions.py)."""

from __future__ import annotations

import random

import pytest

from control.capacity.decisions import (
    HeldData,
    IdleServer,
    cap_creates,
    drain_action,
    held_by_server,
    idle_to_delete,
    kept_because,
    near_hour_end,
    provision_expired,
    retry_decision,
    servers_needed,
    units,
)
from control.users.placement import Demand, Room, place

UNIT = Demand("unit", 1024, 0.5)
NEW = Room("new", True, 3584, 0, 1.75, 0.0)  # cpx22 less the reserve: 3 default users


def users(n: int, memory: int = 1024, cpus: float = 0.5) -> list[Demand]:
    return [Demand(f"u{i}", memory, cpus) for i in range(n)]


def way(n: int) -> list[Room]:
    return [Room(f"w{i}", True, 3584, 0, 1.75, 0.0) for i in range(n)]


@pytest.mark.parametrize(
    ("pending", "active", "on_the_way", "headroom", "servers", "infeasible"),
    [
        ([], [], [], 0, 0, []),
        ([], [], [], 2, 1, []),  # warm headroom alone asks for a server
        ([], [Room("a", True, 3584, 0, 1.75, 0)], [], 2, 0, []),  # 3 free units already
        ([], [], way(1), 4, 1, []),  # a booting server's 3 units count, one more wanted
        ([], [Room("c", False, 3584, 0, 1.75, 0)], [], 2, 1, []),  # a cordoned one's do not
        ([], [Room("a", True, 3584, 3072, 1.75, 1.5)], way(1), 4, 1, []),  # 0 + 3 free
        (users(1), [], [], 0, 1, []),
        (users(3), [], [], 0, 1, []),  # three fit one server
        (users(4), [], [], 0, 2, []),
        (users(3), [], [], 2, 2, []),  # 3 placed, then headroom needs another
        (users(3), [], way(1), 0, 0, []),  # a booting server already covers them
        (users(4), [], way(1), 0, 1, []),
        ([*users(1), Demand("big", 8192, 1)], [], [], 0, 1, ["big"]),  # no type can hold it
        (
            users(2),
            [Room("a", True, 3584, 1024, 1.75, 0.5)],
            [],
            0,
            0,
            [],
        ),  # fits on active (drain)
        (users(3), [Room("a", True, 3584, 1024, 1.75, 0.5)], [], 0, 1, []),
        (users(2, cpus=1.0), [], [], 0, 2, []),  # CPU-bound: one per server
    ],
)
def test_servers_needed(
    pending: list[Demand],
    active: list[Room],
    on_the_way: list[Room],
    headroom: int,
    servers: int,
    infeasible: list[str],
) -> None:
    need = servers_needed(pending, active, on_the_way, NEW, UNIT, headroom)
    assert need.servers == servers
    assert need.infeasible == infeasible
    assert need.free_units >= headroom or servers == 0


@pytest.mark.parametrize(
    ("wanted", "now", "max_servers", "per_run", "create", "reason"),
    [
        (1, 0, 10, 2, 1, None),
        (2, 0, 10, 2, 2, None),
        (5, 0, 10, 2, 2, "MAX_CREATES_PER_RUN"),
        (5, 9, 10, 2, 1, "MAX_SERVERS"),
        (1, 10, 10, 2, 0, "MAX_SERVERS"),
        (100, 0, 10, 100, 10, "MAX_SERVERS"),  # a bug asking for 100 still gets 10 at most
        (0, 10, 10, 2, 0, None),
    ],
)
def test_cap_creates(
    wanted: int, now: int, max_servers: int, per_run: int, create: int, reason: str | None
) -> None:
    capped = cap_creates(wanted, now, max_servers, per_run)
    assert (capped.create, capped.reason) == (create, reason)
    assert capped.create + capped.held_back == wanted
    assert now + capped.create <= max(max_servers, now)


T0 = 1_000_000.0


def idle(sid: str, empty_for: float, billed_for: float, free: int = 3) -> IdleServer:
    return IdleServer(sid, T0 - empty_for, T0 - billed_for, free)


@pytest.mark.parametrize(
    ("servers", "kwargs", "expected"),
    [
        ([idle("a", 700, 3500)], {}, ["a"]),  # idle long enough, 100 s before the hour ends
        ([idle("a", 500, 3500)], {}, []),  # not idle long enough
        ([idle("a", 700, 3700)], {}, []),  # a new billed hour just began: wait
        ([idle("a", 700, 3700)], {"bills_hourly": False}, ["a"]),  # local provider: no hours
        ([idle("a", 700, 3500)], {"min_servers": 1, "servers_now": 1}, []),
        ([idle("a", 700, 3500)], {"min_servers": 1, "servers_now": 2}, ["a"]),
        ([idle("a", 700, 3500)], {"headroom": 2, "fleet_free_units": 3}, []),  # it is the headroom
        (
            [idle("a", 700, 3500), idle("b", 700, 7150)],
            {"headroom": 3, "fleet_free_units": 6},
            ["b"],
        ),
        ([idle("a", 700, 3500), idle("b", 700, 7150)], {}, ["b", "a"]),  # soonest-billed first
    ],
)
def test_idle_to_delete(
    servers: list[IdleServer], kwargs: dict[str, object], expected: list[str]
) -> None:
    args: dict[str, object] = {
        "now": T0,
        "idle_after": 600,
        "servers_now": 5,
        "min_servers": 0,
        "fleet_free_units": 100,
        "headroom": 0,
        "bills_hourly": True,
        "billing_window": 300,
    }
    args.update(kwargs)
    assert idle_to_delete(servers, **args) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("billed_for", "expected"),
    [(0, False), (3299, False), (3300, True), (3599, True), (3600, False), (7199, True)],
)
def test_near_hour_end(billed_for: float, expected: bool) -> None:
    assert near_hour_end(T0 - billed_for, T0, 300) is expected


@pytest.mark.parametrize(
    ("confirmed", "registered", "expected"),
    [
        (T0 - 901, None, True),
        (T0 - 899, None, False),
        (T0 - 5000, T0 - 10, False),
        (None, None, False),
    ],
)
def test_provision_expired(
    confirmed: float | None, registered: float | None, expected: bool
) -> None:
    assert provision_expired(confirmed, registered, T0, 900) is expected


@pytest.mark.parametrize(
    ("kind", "attempt", "retry_after", "next_pair", "alert", "pause_low", "pause_high"),
    [
        ("unavailable", 0, None, True, False, 0, 0),
        ("limit", 0, None, False, True, 3600, 3600),
        ("rate_limited", 0, 42.0, False, False, 42, 42),
        ("rate_limited", 0, None, False, False, 60, 60),
        ("invalid", 0, None, False, True, 600, 600),
        ("transient", 0, None, False, False, 4, 6),
        ("transient", 3, None, False, False, 32, 48),
        ("transient", 30, None, False, False, 240, 360),  # capped
    ],
)
def test_retry_decision(
    kind: str,
    attempt: int,
    retry_after: float | None,
    next_pair: bool,
    alert: bool,
    pause_low: float,
    pause_high: float,
) -> None:
    plan = retry_decision(kind, attempt, retry_after, random.Random(7))  # type: ignore[arg-type]
    assert plan.next_pair is next_pair
    assert plan.alert is alert
    assert pause_low <= plan.pause_scale_up <= pause_high


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([], {}),
        ([("a", "suspended", None)], {"a": HeldData(suspended=1)}),
        (
            [("a", "retained", T0), ("a", "retained", T0 + 5), ("a", "suspended", None)],
            {"a": HeldData(retained=2, suspended=1, retained_until=T0 + 5)},
        ),
        (
            [("a", "retained", T0), ("b", "suspended", None)],
            {"a": HeldData(1, 0, T0), "b": HeldData(0, 1)},
        ),
    ],
)
def test_held_by_server(
    rows: list[tuple[str, str, float | None]], expected: dict[str, HeldData]
) -> None:
    assert held_by_server(rows) == expected


@pytest.mark.parametrize(
    ("held", "expected"),
    [
        (None, None),
        (HeldData(), None),
        (HeldData(suspended=2), "holds the data of 2 suspended user(s)"),
        (
            HeldData(retained=1, retained_until=0.0),
            "holds the data of 1 cancelled user(s) kept (RETENTION_DAYS)",
        ),
        (
            HeldData(retained=1, suspended=1, retained_until=86400.0),
            "holds the data of 1 cancelled user(s) kept until 1970-01-02T00:00:00Z "
            "(RETENTION_DAYS) and 1 suspended user(s)",
        ),
    ],
)
def test_kept_because(held: HeldData | None, expected: str | None) -> None:
    assert kept_because(held) == expected


@pytest.mark.parametrize(
    ("users_left", "moving", "kept", "expected"),
    [
        (0, False, None, "delete"),
        (0, False, "holds the data of 1 suspended user(s)", "keep"),  # data does not follow
        (2, False, None, "move"),
        (2, True, None, "wait"),  # one move at a time
        (1, False, "holds data", "move"),  # running users still move off
    ],
)
def test_drain_action(users_left: int, moving: bool, kept: str | None, expected: str) -> None:
    assert drain_action(users_left, moving, kept) == expected


def test_idle_server_holding_data_is_never_deleted() -> None:
    servers = [
        IdleServer(
            "a", T0 - 700, T0 - 3500, 3, kept_because="holds the data of 1 suspended user(s)"
        ),
        IdleServer("b", T0 - 700, T0 - 3500, 3),
    ]
    chosen = idle_to_delete(
        servers,
        now=T0,
        idle_after=600,
        servers_now=5,
        min_servers=0,
        fleet_free_units=100,
        headroom=0,
        bills_hourly=True,
        billing_window=300,
    )
    assert chosen == ["b"]


def located(n: int, where: str, prefix: str = "v") -> list[Demand]:
    return [Demand(f"{prefix}{where}{i}", 1024, 0.5, where, True) for i in range(n)]


@pytest.mark.parametrize(
    ("pending", "on_the_way", "headroom", "locations"),
    [
        (users(2), [], 0, [None]),  # no volume: anywhere
        (located(1, "fsn1"), [], 0, ["fsn1"]),  # its volume is in fsn1: a server there
        (located(1, "fsn1"), [Room("w", True, 3584, 0, 1.75, 0.0, location="nbg1")], 0, ["fsn1"]),
        (located(1, "fsn1"), [Room("w", True, 3584, 0, 1.75, 0.0, location="fsn1")], 0, []),
        (located(2, "fsn1") + located(1, "hel1"), [], 0, ["fsn1", "hel1"]),
        # users without a volume fill the located server; headroom servers go anywhere
        (located(1, "fsn1") + users(2), [], 0, ["fsn1"]),
        (located(1, "fsn1") + users(3), [], 0, ["fsn1", None]),
        (located(1, "fsn1"), [], 3, ["fsn1", None]),
    ],
)
def test_new_servers_go_where_the_waiting_volumes_are(
    pending: list[Demand], on_the_way: list[Room], headroom: int, locations: list[str | None]
) -> None:
    need = servers_needed(pending, [], on_the_way, NEW, UNIT, headroom)
    assert need.locations == locations
    assert need.servers == len(locations)


def random_fleet(rng: random.Random, n: int) -> list[Room]:
    return [
        Room(
            f"s{i:03d}",
            rng.random() > 0.1,
            3584,
            rng.choice([0, 512, 1024, 2048, 2560, 3072, 3584]),
            1.75,
            rng.choice([0.0, 0.5, 1.0, 1.25, 1.5, 1.75]),
            location=rng.choice([None, "fsn1", "nbg1"]),
        )
        for i in range(n)
    ]


def free_units_packing_every_room(pending: list[Demand], rooms: list[Room]) -> int:
    """The fleet's free units once `pending` is packed over every room, no room left out."""
    placed, _ = place(pending, rooms)
    free = 0
    for room in rooms:
        took = [d for d in pending if placed.get(d.user_id) == room.server_id]
        memory = room.memory_used_mb + sum(d.memory_mb for d in took)
        cpus = room.cpus_used + sum(d.cpus for d in took)
        free += units(Room("x", room.accepts_work, room.memory_total_mb, memory, 1.75, cpus), UNIT)
    return free


@pytest.mark.parametrize("seed", range(30))
def test_packing_only_rooms_that_fit_someone_decides_as_packing_every_room(seed: int) -> None:
    """servers_needed packs only the rooms that could take the smallest pending user
    (sorting the whole fleet cost ~30 ms at 10k servers): the same servers, locations and
    free units as packing every room."""
    rng = random.Random(seed)
    rooms = random_fleet(rng, 40)
    sizes = [(512, 0.25), (1024, 0.5), (2048, 1.0)]
    pending = [
        Demand(f"u{i}", *rng.choice(sizes), location=rng.choice([None, None, "fsn1"]))
        for i in range(rng.randint(1, 12))
    ]
    need = servers_needed(pending, rooms, [], NEW, UNIT, 0)
    _, left = place(pending, rooms)
    assert need.servers >= (1 if left else 0)
    if not left:  # nothing new: the fleet's free units are what packing every room leaves
        assert (need.servers, need.free_units) == (0, free_units_packing_every_room(pending, rooms))
    # Rooms that could take no one change nothing, wherever they are in the list.
    full = [Room(f"f{i}", True, 3584, 3584, 1.75, 1.75) for i in range(5)]
    assert servers_needed(pending, full + rooms + full, [], NEW, UNIT, 0) == need
