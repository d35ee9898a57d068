"""Heartbeat throughput and latency of the control plane, against a bare aiohttp baseline.

Run: `make bench` (or `.venv/bin/python bench/heartbeats.py --workers 1000 --seconds 20`).

What it does, all on 127.0.0.1:
1. starts the control plane (`python -m control`) as a subprocess on a temp database;
2. registers one worker and measures how long its long-poll on `/v1/agent/assignments`
   takes to answer after an admin creates a user, which can only land on that worker
   (median of `--longpoll-rounds`, a distinct user each round);
3. mints N join tokens through the admin API and registers N workers (not measured);
4. drives the N workers for S seconds: each sends signed heartbeats back-to-back
   (closed loop, fresh nonce and timestamp each time), all N concurrently, from
   `--clients` load-generator processes, each with one aiohttp ClientSession;
5. paced phase (`--paced-rate`, 0 skips): the same N workers, open loop, the fleet
   sending R heartbeats/s spread evenly: latency at a realistic load;
6. starts a bare aiohttp server (this file with `--serve-baseline`) as a subprocess
   that answers `ok`, and drives it closed-loop with the same client code and requests.

In phases 4 and 5 every worker also holds one long-poll at all times (`after` its last
generation, `wait` 55 s, as agents do; `--no-longpolls` turns that off), and during
phase 5 the wake-up is measured again, once a second, under that load. The control
plane runs under bench/gc_probe.py, which times every garbage collection: the pauses
inside phase 5's window are reported (`gc`), with the server's peak RSS.
`--insert-workers` writes the N workers into the database instead of registering them
(10k registrations each cost a placement round); `--skip-closed-loop` runs phase 5 only.

The last line printed is one JSON object with the figures (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import multiprocessing
import os
import secrets
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agent.client import poll_wait  # noqa: E402
from agent.features import FEATURES  # noqa: E402
from control.keyring import Keyring  # noqa: E402
from control.users import features  # noqa: E402
from shared import signing  # noqa: E402

HOST = "127.0.0.1"
HEARTBEAT_PATH = "/v1/agent/heartbeat"
ASSIGNMENTS_PATH = "/v1/agent/assignments"
LONGPOLL_WAIT = 55  # what agents ask for (agent/config.py POLL_WAIT)
RESOURCES = {"cpus": 4, "memory_mb": 8192, "disk_gb": 80}
# The long-poll worker must be the one with the most free memory, so that every user
# the benchmark creates is placed on it.
LONGPOLL_RESOURCES = {"cpus": 64, "memory_mb": 1_000_000, "disk_gb": 1000}
HEARTBEAT_BODY = json.dumps(
    {
        "agent_version": "bench",
        "applied_generation": 0,
        "resources": RESOURCES,
        "containers": [],
        # A worker whose agent lacks a feature users' specs need gets no user at all.
        "features": list(FEATURES),
    }
).encode()
REQUEST_TIMEOUT = 30.0
STARTUP_TIMEOUT = 30.0
SETUP_CONCURRENCY = 50


@dataclass(frozen=True)
class Credentials:
    key_id: str
    secret: str


@dataclass
class LoadResult:
    ok: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    polls: int = 0  # long-poll answers (200 or 304) received in the window
    poll_errors: int = 0
    wake_ms: list[float] = field(default_factory=list)  # wake-ups measured under this load
    wake_missed: int = 0  # users created under load whose worker's long-poll never answered
    answers: list[tuple[str, float]] = field(default_factory=list)  # (worker, unix time): 200s
    window_from: float = 0.0  # unix time the measured window began
    rss_peak_mb: float | None = None  # the server's peak resident memory (VmHWM) so far
    server_cpu: float | None = None  # CPU-seconds the server used per wall second
    client_cpu: float | None = None  # same, summed over the load-generator processes
    machine_busy: float | None = None  # share of all CPUs busy (incl. kernel) while measured

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "per_s": round(self.ok / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(percentile(lat, 50), 2),
            "p99_ms": round(percentile(lat, 99), 2),
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "polls": self.polls,
            "poll_errors": self.poll_errors,
            "wakes": len(self.wake_ms),
            "wake_missed": self.wake_missed,
            "wake_p50_ms": round(percentile(sorted(self.wake_ms), 50), 2),
            "wake_p99_ms": round(percentile(sorted(self.wake_ms), 99), 2),
            "server_cpu": None if self.server_cpu is None else round(self.server_cpu, 2),
            "client_cpu": None if self.client_cpu is None else round(self.client_cpu, 2),
            "machine_busy": None if self.machine_busy is None else round(self.machine_busy, 2),
        }


def percentile(ordered: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return float(ordered[rank - 1])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process from /proc (Linux); None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float] | None:
    """(busy, total) jiffies over all CPUs from /proc/stat (Linux); None elsewhere."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    total = float(sum(values[:8]))  # guest time is already inside user time
    idle = float(values[3] + values[4])
    return total - idle, total


# --- servers ----------------------------------------------------------------------
def start_process(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("wb")
    try:
        return subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    finally:
        log.close()


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


async def wait_ready(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited early (exit {proc.returncode}): see {log_path}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url + "/healthz") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"server not ready after {STARTUP_TIMEOUT:.0f}s: {log_path}")


def serve_baseline(port: int) -> None:
    """The bare aiohttp server: reads the request body, answers `ok`."""

    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/healthz", ok)
    app.router.add_post(HEARTBEAT_PATH, ok)
    web.run_app(app, host=HOST, port=port, print=None, access_log=None)


# --- control-plane setup (not measured) -------------------------------------------
async def signed(
    session: aiohttp.ClientSession,
    url: str,
    creds: Credentials,
    method: str,
    path: str,
    body: bytes = b"",
    params: dict[str, str] | None = None,
    limit: float = REQUEST_TIMEOUT,
) -> tuple[int, Any]:
    query, headers = signing.sign_request(creds.key_id, creds.secret, method, path, params, body)
    if body:
        headers["Content-Type"] = "application/json"
    target = url + path + ("?" + query if query else "")
    async with session.request(
        method, target, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=limit)
    ) as r:
        payload = await r.json() if r.content_type == "application/json" else None
        return r.status, payload


async def admin_post(
    session: aiohttp.ClientSession, url: str, token: str, path: str, body: dict[str, Any]
) -> dict[str, Any]:
    async with session.post(
        url + path, json=body, headers={"Authorization": f"Bearer {token}"}
    ) as r:
        payload: dict[str, Any] = await r.json()
        if r.status != 201:
            raise RuntimeError(f"POST {path} -> {r.status}: {payload}")
        return payload


async def register_worker(
    session: aiohttp.ClientSession,
    url: str,
    admin_token: str,
    hostname: str,
    resources: dict[str, int],
) -> Credentials:
    minted = await admin_post(session, url, admin_token, "/v1/join-tokens", {})
    key_id, _, secret = minted["token"].partition(".")
    body = json.dumps(
        {
            "protocol": 1,
            "agent_version": "bench",
            "hostname": hostname,
            "resources": resources,
            "features": list(FEATURES),
        }
    ).encode()
    status, reply = await signed(
        session, url, Credentials(key_id, secret), "POST", "/v1/agent/register", body
    )
    if status != 201:
        raise RuntimeError(f"register {hostname} -> {status}: {reply}")
    return Credentials(reply["worker_id"], reply["secret"])


async def register_workers(url: str, admin_token: str, n: int) -> list[Credentials]:
    sem = asyncio.Semaphore(SETUP_CONCURRENCY)
    connector = aiohttp.TCPConnector(limit=SETUP_CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> Credentials:
            async with sem:
                return await register_worker(session, url, admin_token, f"bench-{i:05d}", RESOURCES)

        return list(await asyncio.gather(*(one(i) for i in range(n))))


# --- load generation --------------------------------------------------------------
async def drive(
    url: str,
    workers: list[tuple[Credentials, float]],
    start: float,
    warmup: float,
    seconds: float,
    period: float | None,
    longpolls: bool = True,
) -> LoadResult:
    """Runs every worker until start+warmup+seconds; only requests that complete inside
    the measured window [start+warmup, start+warmup+seconds] are counted.

    `period` None: closed loop (send, await the reply, send again). Otherwise paced:
    a worker sends at start + offset + k * period (right away when it is late).
    `longpolls`: each worker also holds one long-poll at all times, as an agent does."""
    result = LoadResult(seconds=seconds)
    measure_from = start + warmup
    measure_to = measure_from + seconds
    lat = array("d")
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    # No limit: with long-polls each worker needs two connections at once.
    connector = aiohttp.TCPConnector(limit=0 if longpolls else max(1, len(workers)))

    async def loop(creds: Credentials, offset: float, session: aiohttp.ClientSession) -> None:
        due = start + offset
        while time.time() < measure_to:
            if period is not None:
                await asyncio.sleep(max(0.0, due - time.time()))
                due += period
                if time.time() >= measure_to:
                    break
            _, headers = signing.sign_request(
                creds.key_id, creds.secret, "POST", HEARTBEAT_PATH, None, HEARTBEAT_BODY
            )
            headers["Content-Type"] = "application/json"
            sent = time.perf_counter()
            kind = ""
            try:
                async with session.post(
                    url + HEARTBEAT_PATH, data=HEARTBEAT_BODY, headers=headers, timeout=timeout
                ) as r:
                    await r.read()
                    if r.status != 200:
                        kind = f"http_{r.status}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                kind = type(exc).__name__
                await asyncio.sleep(0.05)  # no hot loop against a dead server
            done_wall = time.time()
            if not measure_from <= done_wall <= measure_to:
                continue
            if kind:
                result.errors += 1
                result.error_kinds[kind] = result.error_kinds.get(kind, 0) + 1
            else:
                result.ok += 1
                lat.append((time.perf_counter() - sent) * 1000)

    async with aiohttp.ClientSession(connector=connector) as session:
        # The first polls spread over half the warm-up, as agents do not all start at once:
        # the window opens once every worker holds one.
        spread = warmup / 2 / max(1, len(workers))
        polls = [
            asyncio.create_task(
                hold_longpoll(url, c, session, result, start + i * spread, measure_to)
            )
            for i, (c, _) in enumerate(workers)
            if longpolls
        ]
        delay = start - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await asyncio.gather(*(loop(c, offset, session) for c, offset in workers))
        for task in polls:
            task.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
    result.latencies_ms = lat.tolist()
    return result


async def hold_longpoll(
    url: str,
    creds: Credentials,
    session: aiohttp.ClientSession,
    result: LoadResult,
    first_at: float,
    measure_to: float,
    reconnecting: bool = False,
) -> None:
    """One long-poll at all times from `first_at`, as an agent holds it: `after` its last
    generation, `wait` LONGPOLL_WAIT, or a random share of it (agent/client.py `poll_wait`)
    after a failure and, when `reconnecting` (a fleet back after the control plane
    restarted), for the first poll that waits (the one after `after=0`'s answer);
    answers and errors inside the window are counted."""
    measure_from = measure_to - result.seconds
    await asyncio.sleep(max(0.0, first_at - time.time()))
    after = 0
    timeout = aiohttp.ClientTimeout(total=LONGPOLL_WAIT + REQUEST_TIMEOUT)
    draw = reconnecting
    while True:
        wait = poll_wait(LONGPOLL_WAIT, failed=draw)
        draw = reconnecting and after == 0  # answered at once: the next is the first to wait
        params = {"after": str(after), "wait": str(wait)}
        query, headers = signing.sign_request(
            creds.key_id, creds.secret, "GET", ASSIGNMENTS_PATH, params
        )
        failed = False
        try:
            async with session.get(
                f"{url}{ASSIGNMENTS_PATH}?{query}", headers=headers, timeout=timeout
            ) as r:
                if r.status == 200:
                    after = int((await r.json())["generation"])
                    result.answers.append((creds.key_id, time.time()))
                else:
                    await r.read()
                    failed = r.status != 304
        except (aiohttp.ClientError, OSError, TimeoutError):
            failed = True
        if measure_from <= time.time() <= measure_to:
            result.poll_errors += failed
            result.polls += not failed
        if failed:
            draw = True
            await asyncio.sleep(1.0)  # as an agent backs off; no hot loop


def client_process(
    url: str,
    workers: list[tuple[Credentials, float]],
    warmup: float,
    seconds: float,
    period: float | None,
    longpolls: bool,
    ready: MpEvent,
    go: MpEvent,
    start_box: Any,
    out: Connection,
    driver: Any = None,
) -> None:
    """`driver`: `drive` unless given (a module-level function of drive's signature, so
    that a spawned process can import it: bench/fleet.py's heartbeats at the served
    interval)."""
    ready.set()
    if not go.wait(timeout=120):
        out.send(None)
        return
    cpu0 = time.process_time()
    result = asyncio.run(
        (driver or drive)(url, workers, float(start_box.value), warmup, seconds, period, longpolls)
    )
    # Builtins only: the parent must not need this module's classes to unpickle.
    out.send(
        {
            "ok": result.ok,
            "errors": result.errors,
            "error_kinds": result.error_kinds,
            "polls": result.polls,
            "poll_errors": result.poll_errors,
            "answers": result.answers,
            "latencies_ms": array("d", result.latencies_ms).tobytes(),
            "client_cpu": time.process_time() - cpu0,
        }
    )
    out.close()


def run_load(
    url: str,
    workers: list[Credentials],
    clients: int,
    warmup: float,
    seconds: float,
    server_pid: int,
    rate: float | None = None,
    longpolls: bool = True,
    during: Any = None,
    driver: Any = None,
) -> LoadResult:
    """Closed loop when `rate` is None, else each worker paced so that the fleet sends
    `rate` heartbeats per second, spread evenly. `during(seconds)`, when given, runs in
    this process for the measured window and returns the users it created as
    (unix time, server id): each one's wake-up is the time until that worker's
    long-poll answered. `driver`: what each client process runs (client_process)."""
    ctx = multiprocessing.get_context("spawn")
    period = None if rate is None else len(workers) / rate
    spread = [
        (c, 0.0 if period is None else i * period / len(workers)) for i, c in enumerate(workers)
    ]
    slices = [spread[i::clients] for i in range(clients)]
    go = ctx.Event()
    start_box = ctx.Value("d", 0.0)
    procs: list[Any] = []
    pipes: list[Connection] = []
    readies: list[MpEvent] = []
    try:
        for share in slices:
            receiver, sender = ctx.Pipe(duplex=False)
            ready = ctx.Event()
            proc = ctx.Process(
                target=client_process,
                args=(url, share, warmup, seconds, period, longpolls, ready, go, start_box, sender),
                kwargs={"driver": driver},
                daemon=True,
            )
            proc.start()
            sender.close()
            procs.append(proc)
            pipes.append(receiver)
            readies.append(ready)
        for ready in readies:
            if not ready.wait(timeout=60):
                raise RuntimeError("a load-generator process did not start")
        start = time.time() + 0.5
        start_box.value = start
        go.set()
        time.sleep(max(0.0, start + warmup - time.time()))
        server_cpu0, busy0 = cpu_seconds(server_pid), machine_busy()
        created = during(start + warmup + seconds - time.time()) if during else []
        time.sleep(max(0.0, start + warmup + seconds - time.time()))
        server_cpu1, busy1 = cpu_seconds(server_pid), machine_busy()
        merged = LoadResult(seconds=seconds, window_from=start + warmup)
        client_cpu = 0.0
        for pipe in pipes:
            if not pipe.poll(timeout=REQUEST_TIMEOUT + 30):
                raise RuntimeError("a load-generator process did not report")
            part: dict[str, Any] | None = pipe.recv()
            if part is None:
                raise RuntimeError("a load-generator process was never told to start")
            merged.ok += part["ok"]
            merged.errors += part["errors"]
            merged.polls += part["polls"]
            merged.poll_errors += part["poll_errors"]
            merged.answers.extend((str(w), float(t)) for w, t in part["answers"])
            for kind, count in part["error_kinds"].items():
                merged.error_kinds[kind] = merged.error_kinds.get(kind, 0) + count
            latencies = array("d")
            latencies.frombytes(part["latencies_ms"])
            merged.latencies_ms.extend(latencies)
            client_cpu += part["client_cpu"]
        if server_cpu0 is not None and server_cpu1 is not None:
            merged.server_cpu = (server_cpu1 - server_cpu0) / seconds
        if busy0 is not None and busy1 is not None and busy1[1] > busy0[1]:
            merged.machine_busy = (busy1[0] - busy0[0]) / (busy1[1] - busy0[1])
        merged.client_cpu = client_cpu / (warmup + seconds)
        merged.wake_ms, merged.wake_missed = wake_ups(created, merged.answers)
        return merged
    finally:
        go.set()
        for proc in procs:
            proc.join(timeout=REQUEST_TIMEOUT + 10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for pipe in pipes:
            pipe.close()


def wake_ups(
    created: list[tuple[float, str]], answers: list[tuple[str, float]]
) -> tuple[list[float], int]:
    """ms from each user's creation to the first answer of its worker's long-poll after
    it, and how many users saw none (placed nowhere, or on a worker without a poll)."""
    by_worker: dict[str, list[float]] = {}
    for worker, at in answers:
        by_worker.setdefault(worker, []).append(at)
    samples, missed = [], 0
    for t0, server_id in created:
        after = [t for t in by_worker.get(server_id, []) if t >= t0]
        if after:
            samples.append((min(after) - t0) * 1000)
        else:
            missed += 1
    return samples, missed


async def create_users(url: str, admin_token: str, seconds: float, rate: float) -> list[Any]:
    """Creates `rate` users per second for `seconds`: [(unix time sent, server id)]."""
    created: list[Any] = []
    tag = secrets.token_hex(3)
    end = time.time() + seconds
    async with aiohttp.ClientSession() as session:
        i = 0
        while time.time() < end - 1.0:  # the last answer must land inside the window
            user = f"bench-u-{tag}-{i}"
            t0 = time.time()
            reply = await admin_post(
                session, url, admin_token, "/v1/users", {"user_id": user, "subdomain": user}
            )
            created.append((t0, str(reply.get("server_id"))))
            i += 1
            await asyncio.sleep(max(0.0, t0 + 1 / rate - time.time()))
    return created


# --- long-poll wake-up latency ----------------------------------------------------
async def longpoll_worker(url: str, admin_token: str) -> list[Any]:
    """The worker every user the benchmark creates lands on, and its generation."""
    async with aiohttp.ClientSession() as session:
        creds = await register_worker(
            session, url, admin_token, "bench-longpoll", LONGPOLL_RESOURCES
        )
        status, reply = await signed(
            session, url, creds, "GET", ASSIGNMENTS_PATH, params={"after": "0", "wait": "0"}
        )
        if status != 200:
            raise RuntimeError(f"assignments -> {status}: {reply}")
        # A heartbeat reports resources too: keep reporting the large ones.
        report = {**json.loads(HEARTBEAT_BODY), "resources": LONGPOLL_RESOURCES}
        status, beat = await signed(
            session, url, creds, "POST", HEARTBEAT_PATH, json.dumps(report).encode()
        )
        if status != 200:
            raise RuntimeError(f"heartbeat -> {status}: {beat}")
        return [creds, int(reply["generation"])]  # [credentials, generation]: updated


async def longpoll_wake(
    url: str, admin_token: str, worker: list[Any], rounds: int, gap: float = 0.0
) -> list[float]:
    """ms from an admin's `POST /v1/users` to the answer of a long-poll that was already
    waiting on the worker the user is placed on, one sample per round (`gap` s apart)."""
    creds, generation = worker
    tag = secrets.token_hex(3)
    samples: list[float] = []
    async with aiohttp.ClientSession() as session:
        for i in range(rounds):
            poll = asyncio.create_task(
                signed(
                    session,
                    url,
                    creds,
                    "GET",
                    ASSIGNMENTS_PATH,
                    params={"after": str(generation), "wait": "30"},
                    limit=40,
                )
            )
            await asyncio.sleep(0.2)  # let the long-poll reach its wait
            if poll.done():
                raise RuntimeError(f"long-poll answered before any change: {poll.result()}")
            t0 = time.perf_counter()
            user = f"bench-lp-{tag}-{i}"
            await admin_post(
                session, url, admin_token, "/v1/users", {"user_id": user, "subdomain": user}
            )
            status, reply = await asyncio.wait_for(poll, 35)
            samples.append((time.perf_counter() - t0) * 1000)
            if status != 200 or int(reply["generation"]) <= generation:
                raise RuntimeError(f"long-poll answered {status}: {reply}")
            generation = int(reply["generation"])
            await asyncio.sleep(gap)
    worker[1:] = [generation]  # the next measurement waits after this generation
    return samples


# --- orchestration ----------------------------------------------------------------
@dataclass
class ControlFigures:
    closed: LoadResult | None = None
    paced: LoadResult | None = None
    wake_ms: float | None = None  # median, before the fleet exists
    gc: dict[str, Any] = field(default_factory=dict)  # pauses in the paced window
    held_longpolls: float | None = None  # the server's count, late in the paced window


def control_env(tmp: Path, port: int, admin_token: str, internal_secret: str) -> dict[str, str]:
    """The control plane's environment for a benchmark: a temp database, quiet logs."""
    return {
        **os.environ,
        "ADMIN_TOKEN": admin_token,
        "INTERNAL_SECRET": internal_secret,
        "DATABASE_PATH": str(tmp / "clawfleet.db"),
        "LISTEN_HOST": HOST,
        "LISTEN_PORT": str(port),
        "LOG_LEVEL": "WARNING",
        # The simulated workers are the whole fleet: no autoscaler-made local agents.
        "MAX_SERVERS": "0",
        "WARM_HEADROOM": "0",
        "LOCAL_WORKERS_DIR": str(tmp / "workers"),
    }


def measure_control(args: argparse.Namespace, tmp: Path) -> ControlFigures:
    admin_token, internal_secret = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    port = free_port()
    url = f"http://{HOST}:{port}"
    # The closed loop sends each worker's heartbeats back to back: throughput, not pace.
    env = control_env(tmp, port, admin_token, internal_secret) | {"AGENT_CALLS_PER_SECOND": "0"}
    log_path, gc_path = tmp / "control.log", tmp / "gc.json"
    probe = str(ROOT / "bench" / "gc_probe.py")
    proc = start_process([sys.executable, *args.server_prefix, probe, str(gc_path)], env, log_path)
    figures = ControlFigures()
    try:
        asyncio.run(wait_ready(url, proc, log_path))
        # First, while its worker is the only one: every user the measurement creates
        # can only be placed there, whatever the placement policy.
        lp = asyncio.run(longpoll_worker(url, admin_token))
        if args.longpoll_rounds > 0:
            wake = asyncio.run(longpoll_wake(url, admin_token, lp, args.longpoll_rounds))
            figures.wake_ms = statistics.median(wake)
            print(f"long-poll wake-up: median {figures.wake_ms:.2f} ms", flush=True)
        t0 = time.monotonic()
        if args.insert_workers:
            workers = insert_workers(str(tmp / "clawfleet.db"), internal_secret, args.workers)
        else:
            workers = asyncio.run(register_workers(url, admin_token, args.workers))
        print(f"registered {len(workers)} workers in {time.monotonic() - t0:.1f}s", flush=True)
        load = functools.partial(
            run_load, url, workers, args.clients, args.warmup, args.seconds, proc.pid
        )
        if not args.skip_closed_loop:
            figures.closed = load(longpolls=args.longpolls)
            print(f"control plane: {json.dumps(figures.closed.summary())}", flush=True)
        if args.paced_rate > 0:
            held: list[float] = []

            def wakes(seconds: float) -> list[Any]:
                created = asyncio.run(create_users(url, admin_token, seconds, args.user_rate))
                held.append(asyncio.run(held_longpolls(url)))  # still inside the window
                return created

            figures.paced = load(rate=args.paced_rate, longpolls=args.longpolls, during=wakes)
            figures.paced.rss_peak_mb = rss_peak_mb(proc.pid)
            figures.held_longpolls = held[0] if held else None
            print(f"control plane at {args.paced_rate:g}/s: {json.dumps(figures.paced.summary())}")
    finally:
        stop_process(proc)
    if figures.paced is not None and gc_path.exists():
        start = figures.paced.window_from
        figures.gc = gc_summary(json.loads(gc_path.read_text()), start, start + args.seconds)
        print(f"GC in the paced window: {json.dumps(figures.gc)}", flush=True)
    return figures


def gc_summary(probe: dict[str, Any], start: float, end: float) -> dict[str, Any]:
    """The pauses (ms) of the collections that ran inside [start, end], by generation."""
    pauses = [(gen, ms, cpu) for at, gen, ms, _, cpu in probe["pauses"] if start <= at <= end]
    every = sorted(ms for _, ms, _ in pauses)
    cpu = sorted(c for _, _, c in pauses)
    summary: dict[str, Any] = {
        "thresholds": probe["thresholds"],
        "frozen": probe["frozen"],
        "count": len(every),
        "p50_ms": round(percentile(every, 50), 2),
        "p99_ms": round(percentile(every, 99), 2),
        "max_ms": round(every[-1], 2) if every else 0.0,
        "ms_per_s": round(sum(every) / (end - start), 2),
        # the same, counting only the collector's own CPU time (no waiting for a core)
        "cpu_p99_ms": round(percentile(cpu, 99), 2),
        "cpu_max_ms": round(cpu[-1], 2) if cpu else 0.0,
    }
    for gen in (0, 1, 2):
        mine = sorted(ms for g, ms, _ in pauses if g == gen)
        found = sum(n for at, g, _, n, _ in probe["pauses"] if g == gen and start <= at <= end)
        # count, longest pause (ms), unreachable objects found (cyclic garbage)
        summary[f"gen{gen}"] = [len(mine), round(mine[-1], 2) if mine else 0.0, found]
    return summary


async def held_longpolls(url: str) -> float:
    """Long-polls the control plane holds now (`clawfleet_assignment_waiters`: /metrics
    is open to loopback callers)."""
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith("clawfleet_assignment_waiters "):
                return float(line.split()[1])
    raise RuntimeError("/metrics has no clawfleet_assignment_waiters")


def rss_peak_mb(pid: int) -> float | None:
    """The process's peak resident set (VmHWM) in MB, from /proc (Linux)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def insert_workers(db_path: str, internal_secret: str, n: int) -> list[Credentials]:
    """N active workers written straight into the database (registering 10k through
    the API costs a placement round each). They declare this agent's features, as the
    benchmark's heartbeats do, and share one secret."""
    secret = secrets.token_urlsafe(32)
    ciphertext = Keyring(internal_secret).encrypt(secret)
    now = time.time()
    ids = [f"srv-bench{i:06d}" for i in range(n)]
    # What registration records as the worker's stated size: the heartbeats' claims
    # are held to it (control/workers/trust.py).
    known = (RESOURCES["cpus"], RESOURCES["memory_mb"], RESOURCES["disk_gb"])
    with sqlite3.connect(db_path, timeout=30) as db:
        db.executemany(
            "INSERT INTO servers (id, name, status, origin, created_at, status_changed_at, "
            "registered_at, last_heartbeat, secret_ciphertext, generation, features, "
            "known_cpus, known_memory_mb, known_disk_gb) "
            "VALUES (?, ?, 'active', 'join', ?, ?, ?, ?, ?, 1, ?, ?, ?, ?)",
            [
                (i, i, now, now, now, now, ciphertext, features.stored(FEATURES), *known)
                for i in ids
            ],
        )
    return [Credentials(i, secret) for i in ids]


def measure_baseline(args: argparse.Namespace, tmp: Path) -> LoadResult:
    port = free_port()
    url = f"http://{HOST}:{port}"
    log_path = tmp / "baseline.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--serve-baseline", str(port)]
    proc = start_process(command, dict(os.environ), log_path)
    try:
        asyncio.run(wait_ready(url, proc, log_path))
        # Same credentials shape, so each request is signed exactly like a real one.
        workers = [
            Credentials(f"srv-bench{i:05d}", secrets.token_urlsafe(32)) for i in range(args.workers)
        ]
        result = run_load(
            url, workers, args.clients, args.warmup, args.seconds, proc.pid, longpolls=False
        )
        print(f"baseline: {json.dumps(result.summary())}", flush=True)
        return result
    finally:
        stop_process(proc)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu": model, "python": sys.version.split()[0]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, default=1000, help="simulated workers (N)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds (S)")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="unmeasured seconds of load before S"
    )
    parser.add_argument(
        "--clients", type=int, default=1, help="load-generator processes (same for both)"
    )
    parser.add_argument("--longpoll-rounds", type=int, default=20)
    parser.add_argument(
        "--paced-rate",
        type=float,
        default=200.0,
        help="extra open-loop phase: the fleet sends this many heartbeats/s (0: skip); "
        "200 is the rate the control plane's heartbeat interval is sized for",
    )
    parser.add_argument(
        "--skip-baseline", action="store_true", help="measure the control plane only"
    )
    parser.add_argument(
        "--skip-closed-loop",
        action="store_true",
        help="only the paced phase (at 10k workers the closed loop's N heartbeat "
        "connections and N long-polls exceed the file-descriptor limit)",
    )
    parser.add_argument(
        "--no-longpolls",
        dest="longpolls",
        action="store_false",
        help="workers only heartbeat (by default each also holds one long-poll, as agents do)",
    )
    parser.add_argument(
        "--user-rate",
        type=float,
        default=2.0,
        help="users created per second during the paced phase (their wake-ups are measured)",
    )
    parser.add_argument(
        "--insert-workers",
        action="store_true",
        help="write the N workers into the database instead of registering them (fast at 10k)",
    )
    parser.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument(
        "--server-prefix",
        nargs="*",
        default=[],
        help=argparse.SUPPRESS,  # e.g. "-m cProfile -o out.prof": python args before -m control
    )
    args = parser.parse_args(argv)
    if not 1 <= args.workers <= 20000:
        parser.error("--workers: 1-20000")
    if not 1 <= args.seconds <= 600 or not 0 <= args.warmup <= 60:
        parser.error("--seconds: 1-600, --warmup: 0-60")
    if not 1 <= args.clients <= 8 or not 0 <= args.longpoll_rounds <= 200:
        parser.error("--clients: 1-8, --longpoll-rounds: 0-200")
    if not 0 <= args.paced_rate <= 100_000:
        parser.error("--paced-rate: 0-100000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_baseline is not None:
        serve_baseline(args.serve_baseline)
        return 0
    with tempfile.TemporaryDirectory(prefix="clawfleet-bench-") as tmpdir:
        tmp = Path(tmpdir)
        control = measure_control(args, tmp)
        baseline = None if args.skip_baseline else measure_baseline(args, tmp)
    c = control.closed.summary() if control.closed else {}
    b = baseline.summary() if baseline else {}
    p = control.paced.summary() if control.paced else {}
    figures: dict[str, Any] = {
        "workers": args.workers,
        "seconds": args.seconds,
        "clients": args.clients,
        "longpolls": args.longpolls,
        "heartbeats_per_s": c.get("per_s"),
        "p50_ms": c.get("p50_ms"),
        "p99_ms": c.get("p99_ms"),
        "errors": c.get("errors"),
        "baseline_per_s": b.get("per_s"),
        "baseline_p50_ms": b.get("p50_ms"),
        "baseline_p99_ms": b.get("p99_ms"),
        "baseline_errors": b.get("errors"),
        "ratio": round(c["per_s"] / b["per_s"], 3) if c and b and b["per_s"] else None,
        "longpoll_wake_ms": None if control.wake_ms is None else round(control.wake_ms, 2),
        "paced_rate": args.paced_rate if p else None,
        "paced_per_s": p.get("per_s"),
        "paced_p50_ms": p.get("p50_ms"),
        "paced_p99_ms": p.get("p99_ms"),
        "paced_errors": p.get("errors"),
        "paced_polls": p.get("polls"),
        "paced_poll_errors": p.get("poll_errors"),
        "paced_wake_p50_ms": p.get("wake_p50_ms"),
        "paced_wake_p99_ms": p.get("wake_p99_ms"),
        "paced_wakes": p.get("wakes"),
        "paced_wake_missed": p.get("wake_missed"),
        "held_longpolls": control.held_longpolls,
        "paced_server_cpu": p.get("server_cpu"),
        "rss_peak_mb": None
        if control.paced is None or control.paced.rss_peak_mb is None
        else round(control.paced.rss_peak_mb, 1),
        "gc": control.gc or None,
        "server_cpu": c.get("server_cpu"),
        "baseline_server_cpu": b.get("server_cpu"),
        "client_cpu": c.get("client_cpu"),
        "baseline_client_cpu": b.get("client_cpu"),
        "machine_busy": c.get("machine_busy") or p.get("machine_busy"),
        "baseline_machine_busy": b.get("machine_busy"),
        **machine(),
    }
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
