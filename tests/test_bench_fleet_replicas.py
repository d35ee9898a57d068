"""bench/fleet.py on PostgreSQL with replicas (issue 16): how workers are dealt to the
replicas, which wake-ups crossed replicas, the PostgreSQL server's CPU summed over its
process tree, the combined figures, and `--insert-workers` on both backends (the rows
the control plane's own queries then count)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from bench.fleet import Foreground, Run, cores, figures, parse_args
from bench.fleet_pg import ProcStat, insert_workers, tree_cpu
from bench.fleet_replicas import Routed, route, split_created
from bench.heartbeats import Credentials, LoadResult
from control.db.backend import open_store
from control.keyring import Keyring
from control.workers import servers

URLS = ["http://a", "http://b", "http://c"]


@pytest.mark.parametrize(
    ("workers", "replicas", "counts"),
    [(1, 1, [1]), (7, 1, [7]), (7, 2, [4, 3]), (7, 3, [3, 2, 2]), (9, 3, [3, 3, 3])],
)
def test_workers_are_dealt_to_the_replicas_in_turn(
    workers: int, replicas: int, counts: list[int]
) -> None:
    creds = [Credentials(f"srv-{i}", f"s{i}") for i in range(workers)]
    routed = route(creds, URLS[:replicas])
    assert [sum(1 for w in routed if w.url == u) for u in URLS[:replicas]] == counts
    # sticky and in order: worker i talks to replica i mod n, with its own credentials
    assert [(w.key_id, w.secret, w.url) for w in routed] == [
        (c.key_id, c.secret, URLS[i % replicas]) for i, c in enumerate(creds)
    ]


@pytest.mark.parametrize(
    ("via", "servers_", "same", "crossed"),
    [
        ([0, 1], ["w0", "w1"], ["w0", "w1"], []),  # each through its worker's replica
        ([1, 0], ["w0", "w1"], [], ["w0", "w1"]),
        ([0, 0, 1], ["w0", "w1", "w1"], ["w0", "w1"], ["w1"]),
        ([1], ["unknown"], ["unknown"], []),  # no routed long-poll: nothing crossed
        ([], [], [], []),
    ],
)
def test_wake_ups_that_crossed_replicas(
    via: list[int], servers_: list[str], same: list[str], crossed: list[str]
) -> None:
    created = [(float(i), s) for i, s in enumerate(servers_)]
    got_same, got_crossed = split_created(created, via, {"w0": 0, "w1": 1})
    assert [s for _, s in got_same] == same
    assert [s for _, s in got_crossed] == crossed
    assert sorted(got_same + got_crossed) == created  # every user in exactly one


TABLE = {
    1: ProcStat(0, 50.0, 0.0),  # init: not the cluster's
    100: ProcStat(1, 1.0, 2.5),  # the postmaster, with 2.5 s of reaped backends
    101: ProcStat(100, 0.5, 0.0),  # a backend
    102: ProcStat(100, 0.25, 0.0),  # the checkpointer
    103: ProcStat(102, 0.125, 0.0),  # a grandchild
    200: ProcStat(1, 9.0, 9.0),  # another cluster's postmaster
    201: ProcStat(200, 3.0, 0.0),
}


@pytest.mark.parametrize(
    ("root", "total"), [(100, 4.375), (101, 0.5), (102, 0.375), (200, 21.0), (999, None)]
)
def test_cluster_cpu_is_its_process_tree(root: int, total: float | None) -> None:
    assert tree_cpu(TABLE, root) == total


@pytest.mark.parametrize(
    ("before", "after", "elapsed", "used"),
    [(1.0, 3.0, 2.0, 1.0), (0.0, 0.5, 10.0, 0.05), (None, 1.0, 1.0, None), (1.0, None, 1.0, None)],
)
def test_cores_over_the_window(
    before: float | None, after: float | None, elapsed: float, used: float | None
) -> None:
    assert cores(before, after, elapsed) == used


def replica(index: int, cpu: float | None, rss: float, longest: float, over: int) -> dict[str, Any]:
    return {
        "replica": index,
        "workers": 5,
        "leads": index == 0,
        "heartbeat_interval_s": 10.0,
        "cpu_cores": cpu,
        "rss_peak_mb": rss,
        "longpolls_held": 5.0,
        "gc": {"count": 1, "max_ms": longest, "over_50ms": over},
    }


def test_combined_figures_over_replicas() -> None:
    run = Run(
        load=LoadResult(seconds=10.0),
        fg=Foreground(),
        intervals=[10.0, 12.5],
        clients=1,
        replicas=[replica(0, 0.25, 120.04, 60.0, 2), replica(1, 0.5, 130.04, 12.0, 0)],
        database_cpu=0.304,
        wakes={},
        database="postgresql (throwaway cluster)",
    )
    f = figures(argparse.Namespace(workers=10, seconds=10.0), run)
    assert (f["server_cpu_cores"], f["rss_peak_mb"], f["longpolls_held"]) == (0.75, 130.0, 10.0)
    assert (f["gc_max_ms"], f["gc_pauses_over_50ms"], f["gc"]) == (60.0, 2, None)
    assert (f["database_cpu_cores"], f["heartbeat_interval_s"]) == (0.3, 12.5)
    assert [r["rss_peak_mb"] for r in f["replicas"]] == [120.0, 130.0]


@pytest.mark.parametrize(
    "argv",
    [
        ["--replicas", "2"],  # SQLite admits one control plane
        ["--postgres", "--database-url", "postgresql://x@h/d"],
        ["--postgres", "--replicas", "3", "--workers", "2"],
        ["--postgres", "--replicas", "9"],
    ],
)
def test_refused_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)


def test_replicas_on_postgres_are_accepted() -> None:
    args = parse_args(["--postgres", "--replicas", "2", "--workers", "300"])
    assert (args.postgres, args.replicas, args.database_url) == (True, 2, "")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_inserted_workers_are_live_workers_of_either_backend(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("postgres_url") if backend == "postgres" else ""
    store = open_store(url, str(tmp_path / "clawfleet.db"))
    await store.open()  # the schema, as the control plane migrates it
    try:
        internal = "bench-internal-secret-" + "x" * 32
        made = insert_workers(url or str(tmp_path / "clawfleet.db"), internal, 3)
        assert await servers.live_count(store) == 3
        rows = await store.fetch_all(
            "SELECT id, status, known_memory_mb, secret_ciphertext FROM servers ORDER BY id"
        )
        assert [(r["id"], r["status"], r["known_memory_mb"]) for r in rows] == [
            (c.key_id, "active", 8192) for c in made
        ]
        assert {Keyring(internal).decrypt(r["secret_ciphertext"]) for r in rows} == {made[0].secret}
    finally:
        await store.close()


def test_routed_credentials_are_credentials() -> None:
    # bench/heartbeats.py signs with any Credentials: a routed worker must be one.
    assert isinstance(Routed("srv-1", "s", "http://a"), Credentials)
