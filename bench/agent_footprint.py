"""Agent footprint: RSS and CPU of `python -m agent` idling with N containers assigned.

Serves a minimal control plane on 127.0.0.1 (register, heartbeat, long-poll) that
assigns N users with 64 MB limits to one agent process (the real control plane's default
plan is 2 GB, so it would place only ~11 users on this 24 GB machine). Waits until the
agent reports all N running and healthy, then samples the agent's RSS (VmRSS) and CPU
time from /proc over a quiet window with production defaults (10 s heartbeats, 30 s
reconcile period). Cleans up everything it created.
Usage: .venv/bin/python bench/agent_footprint.py [--users 20] [--window 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402
from aiohttp import web  # noqa: E402

from shared.protocol import (  # noqa: E402
    Assignments,
    Heartbeat,
    HeartbeatReply,
    RegisterReply,
    decode,
    encode,
)
from tests.agent.conftest import GOOD, AgentProcess, purge_user  # noqa: E402
from tests.agent.images import build  # noqa: E402
from tests.agent.specs import make_spec  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class FakeControl:
    def __init__(self, desired: Assignments) -> None:
        self.desired = desired
        self.last: Heartbeat | None = None
        self.heartbeats = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/agent/register", self.register)
        app.router.add_post("/v1/agent/heartbeat", self.heartbeat)
        app.router.add_get("/v1/agent/assignments", self.assignments)
        return app

    async def register(self, request: web.Request) -> web.Response:
        reply = RegisterReply(worker_id="bench", secret="bench-secret", heartbeat_interval=10)  # noqa: S106
        return web.Response(status=201, body=encode(reply), content_type="application/json")

    async def heartbeat(self, request: web.Request) -> web.Response:
        self.last = decode(await request.read(), Heartbeat)
        self.heartbeats += 1
        reply = HeartbeatReply(heartbeat_interval=10, generation=self.desired.generation)
        return web.Response(body=encode(reply), content_type="application/json")

    async def assignments(self, request: web.Request) -> web.Response:
        if int(request.query["after"]) < self.desired.generation:
            return web.Response(body=encode(self.desired), content_type="application/json")
        await asyncio.sleep(float(request.query["wait"]))
        return web.Response(status=304)


async def main(users: int, window: float) -> None:
    dclient = docker.from_env(version="auto", timeout=60)
    build(dclient, GOOD, healthy=True)
    tmp = Path(tempfile.mkdtemp(prefix="cf-bench-"))
    ids = [f"bench{i:02d}x{os.getpid()}" for i in range(users)]
    fake = FakeControl(Assignments(generation=1, containers=[make_spec(u, GOOD) for u in ids]))
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    agent: AgentProcess | None = None
    try:
        (tmp / "token").write_text("bench.bench-bootstrap")
        agent = AgentProcess(
            {
                "AGENT_ENV_FILE": os.devnull,
                "CONTROL_URL": f"http://127.0.0.1:{port}",
                "BOOTSTRAP_TOKEN_FILE": str(tmp / "token"),
                "STATE_DIR": str(tmp / "state"),
                "TRAEFIK_DYNAMIC_DIR": str(tmp / "traefik"),
                "LOG_LEVEL": "WARNING",
            },
            tmp / "agent.log",
        )
        agent.start()
        assert agent.proc is not None
        deadline = time.monotonic() + 300
        while True:
            beat = fake.last
            ok = beat is not None and sum(
                1 for c in beat.containers if c.state == "running" and c.health == "healthy"
            )
            if ok == users:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"not all running and healthy: {ok}/{users}")
            await asyncio.sleep(1)
        await asyncio.sleep(15)  # let the start-up burst settle
        pid = agent.proc.pid
        c0, t0 = cpu_seconds(pid), time.monotonic()
        peak = rss_mb(pid)
        while time.monotonic() - t0 < window:
            await asyncio.sleep(1)
            peak = max(peak, rss_mb(pid))
        elapsed = time.monotonic() - t0
        cpu = (cpu_seconds(pid) - c0) / elapsed * 100
        print(
            f"users={users} window={elapsed:.0f}s rss_now={rss_mb(pid):.1f}MB "
            f"rss_peak={peak:.1f}MB cpu={cpu:.2f}% heartbeats={fake.heartbeats}"
        )
    finally:
        if agent is not None:
            agent.stop()
        await runner.cleanup()
        for uid in ids:
            purge_user(dclient, uid)
        dclient.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--window", type=float, default=60.0)
    args = parser.parse_args()
    asyncio.run(main(args.users, args.window))
