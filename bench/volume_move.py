"""Move with data (issue 13): from the move decision to the container healthy on the new
server, excluding image pull, over N moves (docs/benchmarks.md).

The real control plane (USER_VOLUMES on, heartbeats every second, the autoscaler every
second) with the local provider running two real agents as processes, each mounting the
user's loop-backed ext4 volume itself (run as root). Set-up, not timed: the busybox test
image is built (so nothing is pulled), a user runs on worker 1 with a file in its state,
worker 1 is cordoned while a second user makes the autoscaler start worker 2, then
uncordoned. Each timed run is the operator's move (POST /v1/users/<id>/move to the other
worker) until the user's view says it runs there, which the agent reports only once the
container passed its health gate. The path timed is the whole real one: the old agent
stops the container and unmounts, the control plane detaches and attaches the volume,
the new agent mounts it and starts the container. After each run the file is read back
in the new container (not timed).

    sudo .venv/bin/python bench/volume_move.py --runs 5

bench/volume_move_hetzner.py runs the same moves against the fake Hetzner API.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from control.capacity.providers.local import LocalProvider  # noqa: E402
from control.settings import Settings  # noqa: E402
from tests.agent import images  # noqa: E402
from tests.agent.conftest import GOOD, new_user, purge_user, unmount_and_detach  # noqa: E402
from tests.agent.test_e2e import plane_settings  # noqa: E402
from tests.fixtures import ControlPlane, make_settings  # noqa: E402

STATE = "/home/node/.openclaw"
TIMEOUT = 180.0


async def poll(control: ControlPlane, user: str, away_from: str | None) -> str:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        _, body = await control.admin("GET", f"/v1/users/{user}")
        where = body.get("server_id")
        if body.get("state") == "running" and where not in (None, away_from):
            return str(where)
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{user} not running away from {away_from} after {TIMEOUT} s")


def sh(client: Any, user: str, script: str) -> str:
    (container,) = client.containers.list(filters={"label": f"clawfleet.user={user}"})
    code, out = container.exec_run(["/bin/busybox", "sh", "-c", script], user="1000:1000")
    if code != 0:
        raise RuntimeError(out.decode())
    return str(out.decode())


async def set_up(control: ControlPlane, client: Any, users: list[str]) -> tuple[str, str]:
    users.append(new_user())
    await control.admin("POST", "/v1/users", {"user_id": users[0], "subdomain": users[0]})
    first = await poll(control, users[0], None)
    sh(client, users[0], f"echo moved > {STATE}/data")
    await control.admin("POST", f"/v1/servers/{first}/cordon")
    users.append(new_user())
    await control.admin("POST", "/v1/users", {"user_id": users[1], "subdomain": users[1]})
    second = await poll(control, users[1], first)
    await control.admin("POST", f"/v1/servers/{first}/uncordon")
    return first, second


async def timed_moves(
    control: ControlPlane,
    client: Any,
    users: list[str],
    runs: int,
    starts: list[float] | None = None,
) -> list[float]:
    """The set-up, then `runs` moves back and forth, each timed from the decision to the
    user's view saying it runs on the other server; the file is read back after each.
    `starts` gets each move's start (epoch seconds), for a breakdown of its steps."""
    here, there = await set_up(control, client, users)
    timings = []
    for _ in range(runs):
        if starts is not None:
            starts.append(time.time())
        started = time.perf_counter()
        await control.admin("POST", f"/v1/users/{users[0]}/move", {"server_id": there})
        arrived = await poll(control, users[0], here)
        timings.append(time.perf_counter() - started)
        assert arrived == there and sh(client, users[0], f"cat {STATE}/data") == "moved\n"
        here, there = there, here
    return timings


def report(timings: list[float], load_before: tuple[float, ...]) -> None:
    ordered = sorted(timings)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    print(f"runs: {len(timings)}  cpus: {os.cpu_count()}")
    print("each (s): " + " ".join(f"{t:.2f}" for t in timings))
    print(f"p50: {statistics.median(timings):.2f} s  p99: {p99:.2f} s  max: {max(timings):.2f} s")
    print(f"load average before: {load_before}  after: {os.getloadavg()}")


async def measure(runs: int, work: Path) -> list[float]:
    made: list[LocalProvider] = []

    def provider(settings: Settings) -> LocalProvider:
        made.append(LocalProvider(settings.local_workers_dir, max_servers=2))
        return made[-1]

    settings = make_settings(
        work,
        **plane_settings(),
        user_volumes=True,
        local_max_servers=2,
        max_servers=2,
        autoscale_interval=1.0,
    )
    control = ControlPlane(settings, provider)
    client = docker.from_env(timeout=60)
    images.build(client, GOOD, healthy=True)
    users: list[str] = []
    await control.start()
    try:
        return await timed_moves(control, client, users, runs)
    finally:
        await control.close()
        for each in made:
            for server in each._list({}):
                each._delete(server.provider_id)
            unmount_and_detach(each.root)
        for user in users:
            purge_user(client, user)
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="volume-move-") as tmp:
        timings = asyncio.run(measure(args.runs, Path(tmp)))
    report(timings, load_before)


if __name__ == "__main__":
    main()
