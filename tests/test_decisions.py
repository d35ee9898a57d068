"""Pure decisions, tested with parameter tables: canonical query, placement, liveness."""

from __future__ import annotations

import pytest

from control.liveness import heartbeat_interval, next_status
from control.placement import Room, choose_server
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


def room(sid: str, total: int, used: int = 0, ok: bool = True) -> Room:
    return Room(server_id=sid, accepts_work=ok, memory_total_mb=total, memory_used_mb=used)


@pytest.mark.parametrize(
    ("rooms", "need", "expected"),
    [
        ([], 1024, None),
        ([room("a", 4096)], 1024, "a"),
        ([room("a", 4096, 3584)], 1024, None),
        ([room("a", 4096, 3072)], 1024, "a"),  # exactly fits
        ([room("a", 4096, 1024), room("b", 8192, 1024)], 1024, "b"),  # most free memory
        ([room("a", 8192, ok=False), room("b", 2048)], 1024, "b"),  # cordoned/draining skipped
        ([room("b", 4096), room("a", 4096)], 1024, "a"),  # ties: lowest id
        ([room("a", 4096, ok=False)], 1024, None),
    ],
)
def test_choose_server(rooms: list[Room], need: int, expected: str | None) -> None:
    assert choose_server(rooms, need) == expected


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
