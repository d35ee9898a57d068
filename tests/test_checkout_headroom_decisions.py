"""Capacity ahead of payment (issue 15, point 6) as parameter tables: open checkouts
count in the warm headroom for their plan (control/capacity/decisions.py)."""

from __future__ import annotations

import pytest

from control.capacity.decisions import IdleServer, expected_headroom, idle_to_delete, servers_needed
from control.users.placement import Demand, Room

UNIT = Demand("unit", 1024, 0.5)  # the default plan
NEW = Room("new", True, 3584, 0, 1.75, 0.0)  # cpx22 less the reserve: 3 default users
BIG = Demand("big", 2048, 1.0)
CPU_HEAVY = Demand("cpu", 1024, 1.0)
SMALL = Demand("small", 512, 0.25)
ODD = Demand("odd", 1536, 0.5)


@pytest.mark.parametrize(
    ("expected", "units"),
    [
        ([], 0),
        ([(UNIT, 0)], 0),
        ([(UNIT, 1)], 1),
        ([(UNIT, 4)], 4),
        ([(BIG, 1)], 2),  # twice the default plan counts twice
        ([(CPU_HEAVY, 2)], 4),  # CPU-bound: twice the default's CPUs
        ([(SMALL, 3)], 3),  # a user is never less than one unit
        ([(ODD, 1)], 2),  # 1.5 units of memory round up
        ([(UNIT, 2), (BIG, 1), (SMALL, 1)], 5),
        ([(UNIT, -1)], 0),  # nonsense counts nothing
    ],
)
def test_expected_headroom(expected: list[tuple[Demand, int]], units: int) -> None:
    assert expected_headroom(expected, UNIT) == units


@pytest.mark.parametrize(
    ("warm", "expected", "active", "servers"),
    [
        (0, [], [], 0),
        (0, [(UNIT, 1)], [], 1),  # one open checkout and no room: a server now
        (0, [(UNIT, 3)], [], 1),  # three fit one new server
        (0, [(UNIT, 4)], [], 2),
        (2, [(UNIT, 1)], [], 1),  # headroom 2 + 1 expected = 3 units: one cpx22
        (2, [(UNIT, 2)], [], 2),  # 4 units: two
        (0, [(UNIT, 2)], [Room("a", True, 3584, 1024, 1.75, 0.5)], 0),  # room already free
        (0, [(BIG, 2)], [], 2),  # 4 units of a bigger plan
    ],
)
def test_open_checkouts_count_like_headroom_in_servers_needed(
    warm: int, expected: list[tuple[Demand, int]], active: list[Room], servers: int
) -> None:
    headroom = warm + expected_headroom(expected, UNIT)
    assert servers_needed([], active, [], NEW, UNIT, headroom).servers == servers


@pytest.mark.parametrize(
    ("warm", "expected", "deleted"),
    [
        (0, 0, ["idle"]),  # nothing expected: the idle server goes
        (0, 1, []),  # a checkout is open: the server it will need stays
        (2, 0, []),  # the warm headroom alone keeps it (3 free units, 2 needed)
        (1, 1, []),
    ],
)
def test_open_checkouts_keep_an_idle_server(warm: int, expected: int, deleted: list[str]) -> None:
    idle = [IdleServer("idle", empty_since=0.0, billed_since=0.0, free_units=3)]
    chosen = idle_to_delete(
        idle,
        now=3500.0,
        idle_after=600.0,
        servers_now=1,
        min_servers=0,
        fleet_free_units=3,
        headroom=warm + expected_headroom([(UNIT, expected)], UNIT),
        bills_hourly=True,
        billing_window=300.0,
    )
    assert chosen == deleted
