"""A whole fleet's load on one control plane, or on replicas sharing one PostgreSQL
database, in the figures issue 16's targets are stated in: N workers behaving as agents
do, users created at a rate, and an open dashboard.

Run: `make bench-fleet` (or `.venv/bin/python bench/fleet.py --workers 1000 --seconds 30
--insert-workers`). Everything on 127.0.0.1:

1. starts the control plane (`python -m control` under bench/gc_probe.py, which times
   every garbage collection) on a temp database, as bench/heartbeats.py does;
2. registers N workers through join tokens (or, with `--insert-workers`, writes them
   into the database: 10k registrations each cost a placement round), each with
   4 CPUs and 8 GB, so a worker holds a few users of the default plan;
3. one heartbeat asks the control plane the interval it hands out at this size
   (control/workers/liveness.py `heartbeat_interval`);
4. load, from `--clients` processes (default: one per 2,000 workers, so that no client
   process nears a core; the report says what they used): every worker holds one
   long-poll at all times (`after` its last generation, `wait` 55 s, as agents do,
   the first ones spread over half the warm-up, or with `--polls-within S` opened over S
   seconds as a fleet reconnecting after a restart, whose first waiting polls draw
   their wait as agents do after a failure; its first heartbeats then come within those
   S seconds too, timed as the agent times them) and heartbeats at the interval of its
   last reply (signed, fresh nonce each time), the first beats spread evenly over one
   interval. The warm-up is one interval and 5 s, so that every worker has beaten and
   holds its long-poll when the window opens;
5. during the measured `--seconds`, from this process: users created at `--user-rate`
   through `POST /v1/users` (its latency is measured), and each one's wake-up, the time
   from that POST to the answer of the long-poll held by the worker the reply places it
   on; an open dashboard, which every `--dashboard-poll` seconds (3, the dashboard's own)
   reads its fleet page's requests at once (the summary, the first page of live servers,
   the pending users) and the users page's first page; and a Prometheus scrape of
   `/metrics` every `--scrape-interval` seconds;
6. reports heartbeat, wake-up, `POST /v1/users` and each admin read's p50 and p99, the
   control plane's CPU (cores, over the window), its peak RSS, and its collector's
   pauses in the window (longest, how many over 50 ms): a table, then one JSON line.

On PostgreSQL (`--postgres`: a throwaway cluster from tests/postgres_server.py, removed
afterwards; or `--database-url URL`, an empty database) with `--replicas N`
(bench/fleet_replicas.py): N control planes on the one database, each under the probe
on its own port. Worker i talks only to replica i mod N (a load balancer with sticky
connections), users are created through the replicas in turn, each dashboard poll goes
to the next replica and every replica is scraped. The interval is asked of each replica;
`--insert-workers` writes through the store's dialect (bench/fleet_pg.py). The report
adds, per replica, its CPU, peak RSS, pauses, held long-polls, served interval and
whether it leads; combined, the CPU summed, the largest RSS, the longest pause, the
wake-ups split by whether the user was created through the replica holding its
worker's long-poll or another (`crossed`), and the PostgreSQL server's CPU over the
window (its postmaster's process tree from /proc; none for `--database-url`).

Develop and check it at N <= 500 and runs of 30 s or less on a shared machine; the
figures in docs/benchmarks.md say at what N and on what machine they were measured.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import resource
import secrets
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agent import client  # noqa: E402
from bench.fleet_pg import Cluster, insert_workers  # noqa: E402
from bench.fleet_replicas import (  # noqa: E402
    Replica,
    Routed,
    cpu_snapshot,
    leads,
    register_routed,
    route,
    split_created,
    start_replicas,
    stop_replicas,
)
from bench.heartbeats import (  # noqa: E402
    HEARTBEAT_BODY,
    HEARTBEAT_PATH,
    REQUEST_TIMEOUT,
    Credentials,
    LoadResult,
    gc_summary,
    held_longpolls,
    hold_longpoll,
    machine,
    percentile,
    rss_peak_mb,
    run_load,
    signed,
    wake_ups,
)

DASHBOARD_POLL = 3.0  # control/api/dashboard.py POLL_SECONDS: what an open dashboard waits
DASHBOARD_PAGE = 50  # its rows per table page (dashboard.js PAGE)
LIVE_STATUSES = "provisioning,active,unhealthy,dead,deleting"  # its fleet page: all but deleted
# What one poll of an open dashboard reads, at once (dashboard.js `refresh`): the fleet
# page's requests, and the users page's first page.
DASHBOARD_READS = {
    "GET /v1/summary": "/v1/summary",
    "GET /v1/servers (first page)": f"/v1/servers?limit={DASHBOARD_PAGE}&status={LIVE_STATUSES}",
    "GET /v1/users?state=pending": f"/v1/users?state=pending&limit={DASHBOARD_PAGE}",
    "GET /v1/users (first page)": f"/v1/users?limit={DASHBOARD_PAGE}",
}
METRICS_READ = "GET /metrics"
GC_PAUSE_LIMIT_MS = 50.0  # issue 16: no pause over 50 ms
WORKERS_PER_CLIENT = 2000
CLIENT_CPU_WARNING = 0.6  # cores per client process: above it, they may be the bottleneck


# --- the workers (in the client processes) ------------------------------------------
@dataclass
class Window:
    opens: float
    closes: float

    def holds(self, at: float) -> bool:
        return self.opens <= at <= self.closes


async def served_beats(
    url: str,
    creds: Credentials,
    first_at: float,
    interval: float,
    session: aiohttp.ClientSession,
    result: LoadResult,
    latencies: array[float],
    window: Window,
    reconnecting: bool = False,
) -> None:
    """One worker's heartbeats until the window closes, each `heartbeat_interval` (of
    the last reply) after the one before, as the agent paces itself; `reconnecting`,
    the first beat is the one after a failure (agent/client.py `after_failure`)."""
    due = first_at
    failed = reconnecting
    while True:
        # Never past the window's end: at 20k the interval (70 s) outlasts the wait
        # for the client processes' reports.
        await asyncio.sleep(max(0.0, min(due, window.closes) - time.time()))
        if time.time() >= window.closes:
            return
        sent_at, sent = time.time(), time.perf_counter()
        kind = ""
        try:
            status, reply = await signed(
                session, url, creds, "POST", HEARTBEAT_PATH, HEARTBEAT_BODY
            )
            if status == 200:
                interval = float(reply["heartbeat_interval"])
            else:
                kind = f"http_{status}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            kind = type(exc).__name__
        if window.holds(time.time()):
            if kind:
                result.errors += 1
                result.error_kinds[kind] = result.error_kinds.get(kind, 0) + 1
            else:
                result.ok += 1
                latencies.append((time.perf_counter() - sent) * 1000)
        # Reconnecting, as the agent times its beats (jittered by it as well).
        delay = (
            client.after_failure(client.jittered(interval), failed) if reconnecting else interval
        )
        due, failed = sent_at + delay, bool(kind)


async def drive_fleet(
    url: str,
    workers: list[tuple[Credentials, float]],
    start: float,
    warmup: float,
    seconds: float,
    period: float | None,
    longpolls: bool = True,
    polls_within: float | None = None,
) -> LoadResult:
    """bench/heartbeats.py `drive`'s signature (run_load's client processes run it):
    `period` is the served interval the load starts from, each worker's offset its
    first beat's place in it. A `Routed` worker talks to its own replica, not `url`.
    The first long-polls open over `polls_within` seconds (default: half the warm-up);
    given, they are a fleet reconnecting, whose first waits are drawn as after a failure."""
    result = LoadResult(seconds=seconds)
    window = Window(start + warmup, start + warmup + seconds)
    latencies = array("d")
    interval = period or 5.0

    def at(c: Credentials) -> str:
        return c.url if isinstance(c, Routed) else url

    # No limit: each worker needs its long-poll's connection and one for its beat.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        within = warmup / 2 if polls_within is None else polls_within
        reconnecting = polls_within is not None
        spread = within / max(1, len(workers))
        polls = [
            asyncio.create_task(
                hold_longpoll(
                    at(c), c, session, result, start + i * spread, window.closes, reconnecting
                )
            )
            for i, (c, _) in enumerate(workers)
            if longpolls
        ]
        # Reconnecting, the first beats come within `polls_within` too, in the same order.
        squeeze = within / interval if reconnecting else 1.0
        await asyncio.gather(
            *(
                served_beats(
                    at(c),
                    c,
                    start + offset * squeeze,
                    interval,
                    session,
                    result,
                    latencies,
                    window,
                    reconnecting,
                )
                for c, offset in workers
            )
        )
        for task in polls:
            task.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
    result.latencies_ms = latencies.tolist()
    return result


# --- users and the dashboard (in this process, during the window) -------------------
@dataclass
class Foreground:
    created: list[tuple[float, str]] = field(default_factory=list)  # (sent at, server id)
    via: list[int] = field(default_factory=list)  # the replica each of `created` went through
    post_ms: list[float] = field(default_factory=list)
    post_errors: int = 0
    unplaced: int = 0  # created, but no worker had room: no wake-up to measure
    reads: dict[str, list[float]] = field(default_factory=dict)
    read_errors: dict[str, int] = field(default_factory=dict)
    held_longpolls: list[float | None] = field(default_factory=list)  # per replica
    leads: list[bool | None] = field(default_factory=list)  # per replica, late in the window


async def create_users(
    session: aiohttp.ClientSession,
    urls: list[str],
    token: str,
    rate: float,
    end: float,
    fg: Foreground,
) -> None:
    """`rate` users a second until `end` (open loop: a slow reply delays only its own
    slot), each through the admin API, as an operator's or a payment's creation does,
    through the replicas in turn."""
    tag, first, i = secrets.token_hex(3), time.time(), 0
    while (slot := first + i / rate) < end - 1.0:  # the last wake-up must land inside
        await asyncio.sleep(max(0.0, slot - time.time()))
        user = f"fleet-{tag}-{i}"
        replica = i % len(urls)
        i += 1
        sent_at, sent = time.time(), time.perf_counter()
        try:
            async with session.post(
                urls[replica] + "/v1/users",
                json={"user_id": user, "subdomain": user},
                headers={"Authorization": f"Bearer {token}"},
            ) as r:
                reply = await r.json() if r.status == 201 else await r.read()
        except (TimeoutError, aiohttp.ClientError):  # past the knee: counted, not fatal
            reply = None
        if not isinstance(reply, dict):
            fg.post_errors += 1
            continue
        fg.post_ms.append((time.perf_counter() - sent) * 1000)
        if reply.get("server_id"):
            fg.created.append((sent_at, str(reply["server_id"])))
            fg.via.append(replica)
        else:
            fg.unplaced += 1


async def timed_read(
    session: aiohttp.ClientSession, url: str, token: str, name: str, path: str, fg: Foreground
) -> None:
    sent = time.perf_counter()
    try:
        async with session.get(url + path, headers={"Authorization": f"Bearer {token}"}) as r:
            await r.read()
    except (TimeoutError, aiohttp.ClientError):  # past the knee: counted, not fatal
        fg.read_errors[name] = fg.read_errors.get(name, 0) + 1
        return
    if r.status == 200:
        fg.reads.setdefault(name, []).append((time.perf_counter() - sent) * 1000)
    else:
        fg.read_errors[name] = fg.read_errors.get(name, 0) + 1


async def dashboard(
    session: aiohttp.ClientSession,
    urls: list[str],
    token: str,
    poll: float,
    end: float,
    fg: Foreground,
) -> None:
    """An open dashboard: its reads at once, then `poll` seconds after they all answered;
    each poll through the next replica (a load balancer sends it to any)."""
    polls = 0
    while time.time() < end:
        url = urls[polls % len(urls)]
        polls += 1
        await asyncio.gather(
            *(timed_read(session, url, token, n, p, fg) for n, p in DASHBOARD_READS.items())
        )
        await asyncio.sleep(min(poll, max(0.0, end - time.time())))


async def scraper(
    session: aiohttp.ClientSession, urls: list[str], every: float, end: float, fg: Foreground
) -> None:
    """Prometheus: /metrics of every replica every `every` seconds (a target each;
    loopback callers need no token)."""
    while time.time() < end:
        await asyncio.gather(
            *(timed_read(session, url, "", METRICS_READ, "/metrics", fg) for url in urls)
        )
        await asyncio.sleep(min(every, max(0.0, end - time.time())))


async def count_held(at: float, urls: list[str], fg: Foreground) -> None:
    """The long-polls each replica holds at `at` (its own count, from /metrics), and
    which one leads."""
    await asyncio.sleep(max(0.0, at - time.time()))
    fg.held_longpolls = list(await asyncio.gather(*(held_longpolls(url) for url in urls)))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        fg.leads = list(await asyncio.gather(*(leads(session, url) for url in urls)))


async def foreground(
    urls: list[str], token: str, seconds: float, args: argparse.Namespace
) -> Foreground:
    fg = Foreground()
    end = time.time() + seconds
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(
            create_users(session, urls, token, args.user_rate, end, fg),
            dashboard(session, urls, token, args.dashboard_poll, end, fg),
            scraper(session, urls, args.scrape_interval, end, fg),
            count_held(end - min(2.0, seconds / 2), urls, fg),  # late, but inside the window
        )
    return fg


# --- the run ------------------------------------------------------------------------
@dataclass
class Run:
    load: LoadResult
    fg: Foreground
    intervals: list[float]  # what each replica hands out
    clients: int
    replicas: list[dict[str, Any]]  # per replica: its workers, CPU, RSS, pauses, polls
    database_cpu: float | None  # cores the PostgreSQL server used over the window
    wakes: dict[str, Any]  # by whether the wake-up crossed replicas
    database: str = "sqlite"


SWEEP_SECONDS = 5.0  # control/fleet.py run_sweeps: when the live workers are counted again


async def served_intervals(firsts: list[Routed]) -> list[float]:
    """The heartbeat interval each replica hands out to this fleet (asked through a
    worker routed to it), once the liveness sweep has counted the workers just made
    (inserted workers are not counted before it: the first answer is the base interval,
    and a whole fleet beating at it would measure a start-up no real fleet has). Only
    the leader sweeps: the others answer from what they counted themselves."""
    async with aiohttp.ClientSession() as session:
        for attempt in range(2):
            if attempt:
                await asyncio.sleep(SWEEP_SECONDS + 1)
            replies = []
            for creds in firsts:
                status, reply = await signed(
                    session, creds.url, creds, "POST", HEARTBEAT_PATH, HEARTBEAT_BODY
                )
                if status != 200:
                    raise RuntimeError(f"heartbeat via {creds.url} -> {status}: {reply}")
                replies.append(float(reply["heartbeat_interval"]))
    return replies


def measure(args: argparse.Namespace, tmp: Path) -> Run:
    """On the database `args` name: SQLite in `tmp`, a throwaway PostgreSQL cluster
    (`--postgres`, stopped whatever happens) or `--database-url`'s."""
    cluster = Cluster() if args.postgres else None
    try:
        if cluster is not None:
            cluster.start()
            print(f"PostgreSQL cluster on port {cluster.server.port}", flush=True)
        url = cluster.url if cluster is not None else args.database_url
        return measure_on(args, tmp, url, cluster)
    finally:
        if cluster is not None:
            cluster.stop()


def measure_on(
    args: argparse.Namespace, tmp: Path, database_url: str, cluster: Cluster | None
) -> Run:
    admin_token, internal_secret = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    extra = {"DATABASE_URL": database_url} if database_url else {}
    replicas = start_replicas(args.replicas, tmp, admin_token, internal_secret, extra)
    try:
        database = database_url or str(tmp / "clawfleet.db")
        run = load_replicas(args, replicas, cluster, database, (admin_token, internal_secret))
    finally:
        stop_replicas(replicas)  # the probes write their pauses as they exit
    for replica, figures in zip(replicas, run.replicas, strict=True):
        path = replica.gc_path
        probe_out = json.loads(path.read_text()) if path.exists() else {"pauses": []}
        figures["gc"] = pauses(probe_out, run.load.window_from, run.load.window_from + args.seconds)
    if database_url:
        run.database = "postgresql (" + ("throwaway cluster" if cluster else "--database-url") + ")"
    return run


def load_replicas(
    args: argparse.Namespace,
    replicas: list[Replica],
    cluster: Cluster | None,
    database: str,
    secrets_: tuple[str, str],
) -> Run:
    """The workers made, then the load, with the CPU every replica and the PostgreSQL
    server used over the window."""
    (admin_token, internal_secret), urls = secrets_, [r.url for r in replicas]
    t0 = time.monotonic()
    if args.insert_workers:
        workers = route(insert_workers(database, internal_secret, args.workers), urls)
    else:
        workers = asyncio.run(register_routed(urls, admin_token, args.workers))
    print(f"{len(workers)} workers in {time.monotonic() - t0:.1f}s", flush=True)
    intervals = asyncio.run(served_intervals(workers[: len(urls)]))  # worker i: replica i
    interval = max(intervals)
    warmup = args.warmup if args.warmup is not None else interval + 5.0
    clients = args.clients or max(1, math.ceil(args.workers / WORKERS_PER_CLIENT))
    print(f"served intervals {intervals}s, warm-up {warmup:g}s, {clients} client process(es)")
    fgs: list[Foreground] = []
    used: dict[str, Any] = {}

    def during(seconds: float) -> list[tuple[float, str]]:
        began, cpu0 = time.monotonic(), cpu_snapshot(replicas)
        db0 = None if cluster is None else cluster.cpu_seconds()
        fgs.append(asyncio.run(foreground(urls, admin_token, seconds, args)))
        time.sleep(max(0.0, began + seconds - time.monotonic()))
        elapsed = time.monotonic() - began
        cpu1 = cpu_snapshot(replicas)
        used["cpu"] = [cores(a, b, elapsed) for a, b in zip(cpu0, cpu1, strict=True)]
        used["db"] = cores(db0, None if cluster is None else cluster.cpu_seconds(), elapsed)
        return fgs[0].created

    rate = len(workers) / interval  # run_load's period: the served interval
    load = run_load(
        urls[0],  # each Routed worker talks to its own replica (drive_fleet)
        list(workers),
        clients,
        warmup,
        args.seconds,
        replicas[0].proc.pid,
        rate=rate,
        during=during,
        driver=functools.partial(drive_fleet, polls_within=args.polls_within),
    )
    fg = fgs[0] if fgs else Foreground()
    per_replica = [
        {
            "replica": r.index,
            "workers": sum(1 for w in workers if w.url == r.url),
            "leads": fg.leads[r.index] if fg.leads else None,
            "heartbeat_interval_s": intervals[r.index],
            "cpu_cores": used.get("cpu", [None] * len(replicas))[r.index],
            "rss_peak_mb": rss_peak_mb(r.proc.pid),
            "longpolls_held": fg.held_longpolls[r.index] if fg.held_longpolls else None,
        }
        for r in replicas
    ]
    replica_of = {w.key_id: i % len(urls) for i, w in enumerate(workers)}
    wakes = crossing(fg, replica_of, load) if len(replicas) > 1 else {}
    return Run(load, fg, intervals, clients, per_replica, used.get("db"), wakes)


def cores(before: float | None, after: float | None, elapsed: float) -> float | None:
    """CPU seconds used per wall second between two readings (None if either is)."""
    if before is None or after is None or elapsed <= 0:
        return None
    return round((after - before) / elapsed, 3)


def crossing(fg: Foreground, replica_of: dict[str, int], load: LoadResult) -> dict[str, Any]:
    """The wake-ups of users created through the replica holding their worker's long-poll,
    and of those created through another (the change crossed replicas to wake it)."""
    same, crossed = split_created(fg.created, fg.via, replica_of)
    out: dict[str, Any] = {}
    for name, created in (("same_replica", same), ("crossed", crossed)):
        ms, missed = wake_ups(created, load.answers)
        out[name] = {**p50_p99(ms), "missed": missed}
    return out


def pauses(probe: dict[str, Any], start: float, end: float) -> dict[str, Any]:
    """The collector in the window: bench/heartbeats.py's summary, and how many pauses
    were over issue 16's 50 ms."""
    if "thresholds" not in probe:
        return {"count": 0, "max_ms": 0.0, "over_50ms": 0}
    summary = gc_summary(probe, start, end)
    summary["over_50ms"] = sum(
        1 for at, _, ms, _, _ in probe["pauses"] if start <= at <= end and ms > GC_PAUSE_LIMIT_MS
    )
    return summary


def p50_p99(samples: list[float]) -> dict[str, float | int]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": round(percentile(ordered, 50), 2),
        "p99_ms": round(percentile(ordered, 99), 2),
    }


def figures(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    """The combined figures at the top level (the CPU summed over the replicas, the
    largest RSS, the longest pause and all those over 50 ms); each replica's in
    `replicas`."""
    load, fg, replicas = run.load, run.fg, run.replicas
    beats = load.summary()
    client_cpu = load.client_cpu
    for r in replicas:
        r["rss_peak_mb"] = None if r["rss_peak_mb"] is None else round(r["rss_peak_mb"], 1)
        r["gc_max_ms"] = r.get("gc", {}).get("max_ms", 0.0)
        r["gc_pauses_over_50ms"] = r.get("gc", {}).get("over_50ms", 0)
    cpus = [r["cpu_cores"] for r in replicas if r["cpu_cores"] is not None]
    rss = [r["rss_peak_mb"] for r in replicas if r["rss_peak_mb"] is not None]
    held = [r["longpolls_held"] for r in replicas if r["longpolls_held"] is not None]
    return {
        "workers": args.workers,
        "seconds": args.seconds,
        "database": run.database,
        "heartbeat_interval_s": max(run.intervals),
        "clients": run.clients,
        "heartbeat": {**p50_p99(load.latencies_ms), "errors": load.errors},
        "heartbeats_per_s": beats["per_s"],
        "longpolls_held": sum(held) if held else None,
        "longpoll_errors": load.poll_errors,
        "wake": {**p50_p99(load.wake_ms), "missed": load.wake_missed, "unplaced": fg.unplaced},
        **({"wake_by_replica": run.wakes} if run.wakes else {}),
        "post_users": {**p50_p99(fg.post_ms), "errors": fg.post_errors},
        "admin": {
            name: {**p50_p99(fg.reads.get(name, [])), "errors": fg.read_errors.get(name, 0)}
            for name in [*DASHBOARD_READS, METRICS_READ]
        },
        "server_cpu_cores": round(sum(cpus), 2) if cpus else None,
        "rss_peak_mb": max(rss) if rss else None,
        "gc_max_ms": max(r["gc_max_ms"] for r in replicas),
        "gc_pauses_over_50ms": sum(r["gc_pauses_over_50ms"] for r in replicas),
        "gc": replicas[0].get("gc") if len(replicas) == 1 else None,
        "replicas": replicas,
        "database_cpu_cores": None if run.database_cpu is None else round(run.database_cpu, 2),
        # Summed over the client processes, per wall second: each should stay well
        # under one core, or the clients, not the control plane, set the figures.
        "client_cpu_cores": None if client_cpu is None else round(client_cpu, 2),
        "machine_busy": beats["machine_busy"],
        **machine(),
    }


def table(f: dict[str, Any]) -> str:
    """The figures a reader looks at first, one row each; with replicas, each one's."""
    rows = [
        ("heartbeat p50 / p99", _ms(f["heartbeat"]), f"{f['heartbeat']['errors']} errors"),
        ("wake-up p50 / p99", _ms(f["wake"]), f"{f['wake']['missed']} missed"),
        *(
            (f"  {name.replace('_', ' ')}", _ms(v), f"{v['missed']} missed")
            for name, v in f.get("wake_by_replica", {}).items()
        ),
        ("POST /v1/users p50 / p99", _ms(f["post_users"]), f"{f['post_users']['errors']} errors"),
        *((name, _ms(v), f"{v['errors']} errors") for name, v in f["admin"].items()),
        ("control-plane CPU", f"{f['server_cpu_cores']} cores", ""),
        ("control-plane peak RSS", f"{f['rss_peak_mb']} MB", ""),
        ("GC pauses", f"longest {f['gc_max_ms']} ms", f"{f['gc_pauses_over_50ms']} over 50 ms"),
        ("long-polls held", str(f["longpolls_held"]), f"{f['longpoll_errors']} errors"),
        *(replica_rows(f["replicas"]) if len(f["replicas"]) > 1 else []),
        *(
            [("PostgreSQL server CPU", f"{f['database_cpu_cores']} cores", "")]
            if f["database"] != "sqlite"
            else []
        ),
        ("client processes", f"{f['client_cpu_cores']} cores", f"{f['clients']} processes"),
    ]
    title = (
        f"{f['workers']} workers on {f['database']}, {f['seconds']:g} s, heartbeat every "
        f"{f['heartbeat_interval_s']:g} s ({f['heartbeats_per_s']}/s)"
    )
    width = max(len(r[0]) for r in rows)
    lines = [title, *(f"  {a:<{width}}  {b:<22} {c}".rstrip() for a, b, c in rows)]
    return "\n".join(lines)


def replica_rows(replicas: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    rows = []
    for r in replicas:
        name = f"replica {r['replica']}" + (" (leads)" if r["leads"] else "")
        rows.append(
            (
                name,
                f"{r['cpu_cores']} cores, {r['rss_peak_mb']} MB",
                f"{r['workers']} workers, {r['longpolls_held']} polls held, "
                f"interval {r['heartbeat_interval_s']:g} s, longest GC {r['gc_max_ms']} ms "
                f"({r['gc_pauses_over_50ms']} over 50)",
            )
        )
    return rows


def _ms(v: dict[str, Any]) -> str:
    return f"{v['p50_ms']} / {v['p99_ms']} ms (n={v['n']})"


def raise_fd_limit() -> None:
    """Long-polls hold a socket each: the soft limit up to the hard one, for the control
    plane and the clients this process starts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, default=500, help="simulated workers (N)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds")
    parser.add_argument(
        "--warmup", type=float, help="unmeasured seconds of load first (default: interval + 5)"
    )
    parser.add_argument(
        "--clients", type=int, help=f"load processes (default: one per {WORKERS_PER_CLIENT})"
    )
    parser.add_argument("--user-rate", type=float, default=2.0, help="users created per second")
    parser.add_argument("--dashboard-poll", type=float, default=DASHBOARD_POLL, help="seconds")
    parser.add_argument("--scrape-interval", type=float, default=15.0, help="/metrics, seconds")
    parser.add_argument(
        "--polls-within",
        type=float,
        metavar="SECONDS",
        help="open the first long-polls and heartbeats over this many seconds (default: "
        "polls over half the warm-up, beats over an interval), as a fleet reconnecting after "
        "the control plane restarted (1: at once)",
    )
    parser.add_argument(
        "--insert-workers",
        action="store_true",
        help="write the N workers into the database instead of registering them (fast at 10k)",
    )
    database = parser.add_mutually_exclusive_group()
    database.add_argument(
        "--postgres",
        action="store_true",
        help="on PostgreSQL: a throwaway cluster (Debian's initdb, removed afterwards)",
    )
    database.add_argument(
        "--database-url",
        default="",
        metavar="URL",
        help="on this PostgreSQL database instead (empty: the run leaves its rows there)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="control planes on the one database (PostgreSQL only), workers spread over them",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.workers <= 20000 or not 1 <= args.seconds <= 600:
        parser.error("--workers: 1-20000, --seconds: 1-600")
    if not 1 <= args.replicas <= min(8, args.workers):
        parser.error("--replicas: 1-8, and no more than --workers")
    if args.replicas > 1 and not (args.postgres or args.database_url):
        parser.error("--replicas above 1 needs --postgres or --database-url (SQLite admits one)")
    if args.clients is not None and not 1 <= args.clients <= 16:
        parser.error("--clients: 1-16")
    if not 0 < args.user_rate <= 100 or args.dashboard_poll <= 0 or args.scrape_interval <= 0:
        parser.error("--user-rate: (0, 100]; --dashboard-poll, --scrape-interval: > 0")
    if args.polls_within is not None and not 0 <= args.polls_within <= 600:
        parser.error("--polls-within: 0-600 seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="clawfleet-fleet-") as tmp:
        run = measure(args, Path(tmp))
    result = figures(args, run)
    print(table(result), flush=True)
    if (result["client_cpu_cores"] or 0) / run.clients > CLIENT_CPU_WARNING:
        print(
            f"warning: the client processes used {result['client_cpu_cores']} cores: "
            "they may have set these figures; run again with more --clients"
        )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
