"""Replicas of the control plane as real processes on one PostgreSQL database, for the
failover tests (tests/test_failover.py, issue 16).

- `Replica`: `python -m control` on its own port and DATABASE_PATH directory, every other
  setting the same for all (as behind a load balancer: a spec must not depend on which
  replica renders it), PROVIDER=hetzner against the fake Hetzner API through its own `Tap`.
  `kill()` is SIGKILL, `pause()`/`resume()` SIGSTOP/SIGCONT; `close()` always ends it.
- `Tap`: a forwarding proxy on 127.0.0.1 between one replica and the fake, recording each
  provider call's start and end (once its reply is written back): which replica's
  singletons called the provider, when. With `gate` set to an unset event, replies to
  calls of the path `gated` wait for it (`held` counts them): a call held in flight.
- `Worker`: a protocol-level agent (tests/worker.py signs) that heartbeats and holds a
  long-poll, each request to the next replica in turn and, once one stops answering,
  to the others only (as behind a round-robin load balancer). It records every desired set
  delivered (user -> spec hash) and the sequence number of its last acknowledged
  heartbeat, which each heartbeat carries as its agent version.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
from aiohttp import web

from tests.ports import free_port
from tests.worker import FakeWorker

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "failover-admin-token-" + "f" * 32
WORKER_RESOURCES = {"cpus": 16, "memory_mb": 16384, "disk_gb": 400}  # 15 default users
# Calls every replica makes at start-up to validate the provider, leader or not.
VALIDATION = ("/v1/server_types", "/v1/locations", "/v1/ssh_keys", "/v1/pricing")


@dataclass(frozen=True)
class Call:
    replica: str
    method: str
    path: str
    started: float  # time.time(), comparable with the replicas' lease times
    ended: float


class Tap:
    """Forwards one replica's provider calls to the fake and records them."""

    def __init__(self, name: str, upstream: str) -> None:
        self.name = name
        self.upstream = upstream.removesuffix("/v1")
        self.calls: list[Call] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.gate: asyncio.Event | None = None
        self.gated = "/v1/servers"  # the first call of a run's orphan sweep
        self.held = 0

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        started = time.time()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers,
            data=await request.read(),
        ) as r:  # fmt: skip
            body = await r.read()
            reply = web.StreamResponse(status=r.status)
            reply.content_type = r.content_type
        if (gate := self.gate) is not None and request.path == self.gated:
            self.held += 1
            await gate.wait()
        await reply.prepare(request)
        await reply.write(body)
        await reply.write_eof()  # in the caller's socket: a stopped caller finds it there
        self.calls.append(Call(self.name, request.method, request.path, started, time.time()))
        return reply

    def singleton_calls(self) -> list[Call]:
        """Calls only the leader's singletons make (all but start-up's validation)."""
        return [c for c in self.calls if c.path not in VALIDATION]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()


@dataclass
class Replica:
    name: str
    env: dict[str, str]
    home: Path
    tap: Tap
    proc: asyncio.subprocess.Process | None = None
    log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['LISTEN_PORT']}"

    async def start(self, session: aiohttp.ClientSession, timeout: float = 60.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.log = (self.home / "control.log").open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "control", cwd=self.home, env=self.env,
            stdout=asyncio.subprocess.DEVNULL, stderr=self.log,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while (await self.ready(session)) is None:
            assert self.proc.returncode is None, f"{self.name} exited:\n{self.log_text()}"
            assert time.monotonic() < deadline, f"{self.name} not ready:\n{self.log_text()}"
            await asyncio.sleep(0.05)

    async def ready(self, session: aiohttp.ClientSession) -> str | None:
        """The `leader` check's detail from /readyz, or None while it does not answer."""
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(
                self.url + "/readyz", timeout=aiohttp.ClientTimeout(total=5)
            ) as r:
                if r.status == 200:
                    return str((await r.json())["checks"]["leader"]["detail"])
        return None

    async def leads(self, session: aiohttp.ClientSession) -> bool:
        return (await self.ready(session) or "").startswith("this replica leads")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None and self.proc.returncode is None
        self.proc.send_signal(sig)

    async def kill(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        await self.proc.wait()

    def log_text(self) -> str:
        return (self.home / "control.log").read_text(errors="replace")

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)  # a paused one cannot terminate
                self.proc.kill()
            await self.proc.wait()
        if self.log is not None:
            self.log.close()
        await self.tap.close()


def replica_env(
    name: str, home: Path, database_url: str, tap: Tap, token: str, **overrides: str
) -> dict[str, str]:
    port = free_port()
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "ADMIN_TOKEN": ADMIN,
        "INTERNAL_SECRET": "failover-internal-secret-" + "s" * 32,
        "DATABASE_URL": database_url,
        "DATABASE_PATH": str(home / "clawfleet.db"),
        "LISTEN_HOST": "127.0.0.1",
        "LISTEN_PORT": str(port),
        "PUBLIC_URL": "https://control.example.com",  # one address for all, as behind an LB
        "PROVIDER": "hetzner",
        "HETZNER_API_TOKEN": token,
        "HETZNER_API_ENDPOINT": tap.url,
        "HETZNER_LOCATION": "nbg1",
        "AGENT_DIST_DIR": str(home.parent / "dist"),
        "MAX_SERVERS": "0",  # no creates: the runs' calls are the orphan sweeps'
        "WARM_HEADROOM": "0",
        "USER_VOLUMES": "false",  # specs go out at once: the workers have no provider volumes
        "LOG_LEVEL": "WARNING",
        **overrides,
    }


@dataclass
class Worker:
    """A protocol-level agent: heartbeats and one long-poll at a time, each request to
    the next replica in turn (as a round-robin load balancer sends them); a replica
    that does not answer is left out from then on."""

    live: list[str]  # the replicas' URLs still answering
    proto: FakeWorker  # the registered identity (its url is not used)
    turn: int = 0
    seq: int = 0  # heartbeats sent
    acked: int = 0  # the sequence number of the last 2xx heartbeat
    generation: int = 0
    # (time, replica URL, {user: spec hash}) for every desired set delivered, in order.
    seen: list[tuple[float, str, dict[str, str]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def server_id(self) -> str:
        return self.proto.key_id

    def _via(self, url: str | None = None) -> tuple[str, FakeWorker]:
        if url is None:
            self.turn += 1
            url = self.live[self.turn % len(self.live)]
        return url, dataclasses.replace(self.proto, url=url)

    def _lost(self, url: str, exc: BaseException) -> None:
        self.errors.append(f"{url}: {type(exc).__name__}")
        if url in self.live and len(self.live) > 1:
            self.live.remove(url)

    async def heartbeat(self) -> None:
        self.seq += 1
        url, proto = self._via()
        try:
            reply = await proto.request("POST", "/v1/agent/heartbeat", self._beat())
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._lost(url, exc)
            return
        if reply.status == 200:
            self.acked = self.seq
        else:
            self.errors.append(f"heartbeat {reply.status}: {reply.body}")

    def _beat(self) -> dict[str, Any]:
        return {
            "agent_version": f"0.1.{self.seq}",  # stored as sent: the database shows it
            "applied_generation": self.generation,
            "resources": self.proto.resources,
            "containers": [],
            "features": self.proto.features,
        }

    async def poll(self, wait: int, at: str | None = None) -> None:
        url, proto = self._via(at)
        try:
            reply = await proto.assignments(after=self.generation, wait=wait)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._lost(url, exc)
            await asyncio.sleep(0.05)  # a dead replica refuses at once: not a busy loop
            return
        if reply.status == 200:
            self.generation = int(reply.body["generation"])
            specs = {c["user_id"]: c["spec_hash"] for c in reply.body["containers"]}
            self.seen.append((time.time(), url, specs))
        elif reply.status != 304:
            self.errors.append(f"assignments {reply.status}: {reply.body}")
            await asyncio.sleep(0.05)

    async def refresh(self, url: str) -> None:
        """A whole desired set from `url` (after=0), as an agent's first poll asks."""
        self.generation = 0
        await self.poll(wait=0, at=url)
        assert self.generation > 0, self.errors[-3:]

    async def run(self, stop: asyncio.Event, beat_every: float) -> None:
        async def beats() -> None:
            while not stop.is_set():
                await self.heartbeat()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), beat_every)

        async def polls() -> None:
            while not stop.is_set():
                await self.poll(wait=2)

        await asyncio.gather(beats(), polls())

    def desired(self) -> dict[str, str]:
        return self.seen[-1][2] if self.seen else {}


async def join(session: aiohttp.ClientSession, urls: list[str], index: int) -> Worker:
    """Registers a worker through the replica `urls[0]` with a join token minted there;
    it then sends its requests to each of `urls` in turn."""
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with session.post(
        urls[0] + "/v1/join-tokens", json=WORKER_RESOURCES, headers=headers
    ) as r:
        assert r.status == 201, await r.text()
        token = (await r.json())["token"]
    proto = FakeWorker.with_token(urls[0], session, token)
    proto.resources = dict(WORKER_RESOURCES)
    reply = await proto.register(hostname=f"worker-{index}", resources=WORKER_RESOURCES)
    assert reply.status == 201, reply.body
    return Worker(list(urls), proto)
