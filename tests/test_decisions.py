"""Pure decisions, tested with parameter tables: canonical query, placement, liveness,
capacity trust."""

from __future__ import annotations

import pytest

from control.capacity.orphans import orphans
from control.capacity.providers.base import ProviderServer
from control.users.placement import Demand, Room, choose_server, place
from control.workers.liveness import heartbeat_interval, next_status, paced_over
from control.workers.trust import Capacity, Stated, describe_source, of_type, trust
from shared.signing import canonical_query, encode_pairs


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", ""),
        ("after=3&wait=30", "after=3&wait=30"),
        ("wait=30&after=3", "after=3&wait=30"),
        ("a=2&a=1", "a=1&a=2"),
        ("flag", "flag="),
        ("flag=", "flag="),
        ("x=a%20b", "x=a%20b"),
        ("x=a+b", "x=a%2Bb"),  # RFC 3986: '+' is not a space
        ("x=%7e%2d", "x=~-"),  # unreserved characters are decoded, hex case does not matter
        ("x=%c3%a9", "x=%C3%A9"),
        ("b=1&a%5B%5D=2", "a%5B%5D=2&b=1"),
        ("&&a=1&", "a=1"),
        ("Z=1&a=1", "Z=1&a=1"),  # byte order: upper case sorts first
    ],
)
def test_canonical_query(raw: str, expected: str) -> None:
    assert canonical_query(raw) == expected


def test_encoded_pairs_round_trip_through_canonical_query() -> None:
    pairs = [("näme", "välue/ü"), ("a", ""), ("~ok-._", "sp ace")]
    assert canonical_query(encode_pairs(pairs)) == encode_pairs(pairs)


def room(
    sid: str, total: int, used: int = 0, ok: bool = True, cpus: float = 8, cpus_used: float = 0
) -> Room:
    return Room(sid, ok, total, used, cpus, cpus_used)


@pytest.mark.parametrize(
    ("rooms", "need", "expected"),
    [
        ([], 1024, None),
        ([room("a", 4096)], 1024, "a"),
        ([room("a", 4096, 3584)], 1024, None),
        ([room("a", 4096, 3072)], 1024, "a"),  # exactly fits
        ([room("a", 4096, 1024), room("b", 8192, 1024)], 1024, "a"),  # best fit: least free
        ([room("a", 4096, 3584), room("b", 8192)], 1024, "b"),  # a is too full
        ([room("a", 8192, ok=False), room("b", 2048)], 1024, "b"),  # cordoned/draining skipped
        ([room("b", 4096), room("a", 4096)], 1024, "a"),  # ties: lowest id
        ([room("a", 4096, ok=False)], 1024, None),
        ([room("a", 2048, cpus=1, cpus_used=0.75), room("b", 8192)], 1024, "b"),  # a lacks CPU
        ([room("a", 2048, cpus=1, cpus_used=0.5)], 1024, "a"),  # CPU fits exactly
    ],
)
def test_choose_server(rooms: list[Room], need: int, expected: str | None) -> None:
    assert choose_server(rooms, need, 0.5) == expected
    placed, unplaced = place([Demand("u", need, 0.5)], rooms)
    assert placed.get("u") == expected
    assert unplaced == ([] if expected else ["u"])


@pytest.mark.parametrize(
    ("demands", "rooms", "expected", "left"),
    [
        # Fill the fullest first, then move on.
        ([1024] * 3, [room("a", 2048), room("b", 4096)], {"u0": "a", "u1": "a", "u2": "b"}, []),
        # A large plan skips a room too small for it and lands where it fits.
        ([3000, 1024], [room("a", 2048), room("b", 4096)], {"u0": "b", "u1": "b"}, []),
        ([4096, 4096], [room("a", 4096)], {"u0": "a"}, ["u1"]),
        ([512] * 3, [room("a", 8192, cpus=1)], {"u0": "a", "u1": "a"}, ["u2"]),  # CPU bound
        ([1024], [room("a", 8192, ok=False)], {}, ["u0"]),
    ],
)
def test_place_many(
    demands: list[int], rooms: list[Room], expected: dict[str, str], left: list[str]
) -> None:
    placed, unplaced = place([Demand(f"u{i}", m, 0.5) for i, m in enumerate(demands)], rooms)
    assert placed == expected
    assert unplaced == left
    for server in rooms:
        users = [i for i, (u, s) in enumerate(placed.items()) if s == server.server_id]
        used = sum(demands[i] for i in users)
        assert used <= server.memory_free_mb


@pytest.mark.parametrize(
    ("status", "age", "started_ago", "expected"),
    [
        ("active", 5, 1000, "active"),
        ("active", 30, 1000, "active"),  # exactly 3 intervals: not yet missed
        ("active", 31, 1000, "unhealthy"),
        ("unhealthy", 10, 1000, "active"),  # a heartbeat came back
        ("unhealthy", 301, 1000, "dead"),
        ("active", 301, 1000, "dead"),
        ("active", 5000, 20, "active"),  # restart grace: counted from our start
        ("unhealthy", 5000, 100, "unhealthy"),
        ("provisioning", 5000, 1000, "provisioning"),  # never registered: not liveness' job
        ("dead", 1, 1000, "dead"),  # terminal
    ],
)
def test_next_status(status: str, age: float, started_ago: float, expected: str) -> None:
    now = 1_000_000.0
    result = next_status(
        status, now - age, now, interval=10, dead_after=300, started_at=now - started_ago
    )
    assert result == expected


@pytest.mark.parametrize(
    ("base", "workers", "expected"),
    [
        (10, 10, 10),
        (10, 2000, 10),  # 200/s exactly
        (10, 4000, 20),  # stretched to keep 200/s
        (10, 100_000, 75),  # capped so 3 missed intervals stay under DEAD_AFTER
    ],
)
def test_heartbeat_interval_bounds_load(base: float, workers: int, expected: float) -> None:
    assert heartbeat_interval(base, workers, max_rate=200, dead_after=300) == expected


@pytest.mark.parametrize(
    ("workers", "dead_after", "expected"),
    [
        (10_000, 300, None),  # 50 s stretches to 200/s
        (15_000, 300, None),  # 75 s: the longest, exactly 200/s
        (20_000, 300, 20_000 / 75),  # the interval can stretch no further
        (20_000, 600, None),  # a longer DEAD_AFTER lets it
        (0, 300, None),
    ],
)
def test_a_fleet_past_the_longest_interval_is_over_the_pace(
    workers: int, dead_after: float, expected: float | None
) -> None:
    assert paced_over(workers, max_rate=200, dead_after=dead_after) == expected
    # It says so exactly when the interval handed out lets the fleet beat faster.
    rate = workers / heartbeat_interval(10, workers, max_rate=200, dead_after=dead_after)
    assert (rate > 200) == (expected is not None)


def cap(cpus: int, memory_mb: int, disk_gb: int) -> Capacity:
    return Capacity(cpus, memory_mb, disk_gb)


@pytest.mark.parametrize(
    ("claim", "ceiling", "stored", "overclaim"),
    [
        (cap(2, 4096, 80), cap(2, 4096, 80), cap(2, 4096, 80), None),
        (cap(2, 3800, 76), cap(2, 4096, 80), cap(2, 3800, 76), None),  # less is believed
        (
            cap(1024, 1 << 20, 80),
            cap(2, 4096, 80),
            cap(2, 4096, 80),
            "claims more than it has: cpus 1024 (has 2), memory_mb 1048576 (has 4096)",
        ),
        (
            cap(2, 4096, 81),
            cap(2, 4096, 80),
            cap(2, 4096, 80),
            "claims more than it has: disk_gb 81 (has 80)",
        ),
        (
            cap(2**62, 0, 0),
            cap(2, 4096, 80),
            cap(2, 0, 0),
            "claims more than it has: cpus 4611686018427387904 (has 2)",
        ),
    ],
)
def test_trust(claim: Capacity, ceiling: Capacity, stored: Capacity, overclaim: str | None) -> None:
    assert trust(claim, ceiling) == (stored, overclaim)


@pytest.mark.parametrize(
    ("stated", "ceiling", "source"),
    [
        (Stated(4, 8192, 160), cap(4, 8192, 160), "stated"),
        (Stated(4, 8192), cap(4, 8192, 99), "stated; disk_gb as claimed at registration"),
        (Stated(), cap(64, 1 << 20, 99), "claimed at registration (nothing stated)"),
    ],
)
def test_ceiling_at_registration(stated: Stated, ceiling: Capacity, source: str) -> None:
    claim = cap(64, 1 << 20, 99)
    assert stated.ceiling(claim) == ceiling
    assert describe_source("stated", stated) == source


@pytest.mark.parametrize(
    ("cpus", "memory_mb", "disk_gb", "expected"),
    [(2, 4096, 80, Stated(2, 4096, 80)), (8, 16384, 0, Stated(8, 16384, None))],
)
def test_a_server_type_states_what_it_knows(
    cpus: int, memory_mb: int, disk_gb: int, expected: Stated
) -> None:
    assert of_type(cpus, memory_mb, disk_gb) == expected


OURS = {"managed-by": "clawfleet", "clawfleet-cluster": "prod"}


@pytest.mark.parametrize(
    ("labels", "known", "before", "expected"),
    [
        (OURS, set(), {}, 1),  # first sighting
        (OURS, set(), {"p1": 2}, 3),  # the third consecutive sweep
        ({"managed-by": "clawfleet"}, set(), {}, None),  # one label is not ours
        ({**OURS, "clawfleet-cluster": "staging"}, set(), {}, None),  # another cluster's
        (OURS, {"p1"}, {"p1": 2}, None),  # the database knows its id
        (OURS, {"srv-a"}, {}, None),  # or its name (a create whose reply was lost)
    ],
)
def test_orphans_need_both_labels_and_no_row(
    labels: dict[str, str], known: set[str], before: dict[str, int], expected: int | None
) -> None:
    server = ProviderServer("p1", "srv-a", "running", labels, None, "cx23", "fsn1", 0.0)
    found = orphans([server], known, OURS, before)
    assert found == ([] if expected is None else [(server, expected)])


@pytest.mark.parametrize(
    ("memory_used", "cpus_used", "overfull"),
    [
        (1024, 1.0, False),  # exactly full
        (1025, 1.0, True),
        (512, 0.1 + 0.2 + 0.7, False),  # a float sum at the limit is not over it
        (512, 1.05, True),
    ],
)
def test_a_room_is_overfull_only_past_what_it_has(
    memory_used: int, cpus_used: float, overfull: bool
) -> None:
    room = Room("s", True, 1024, memory_used, cpus_total=1.0, cpus_used=cpus_used)
    assert room.overfull is overfull
