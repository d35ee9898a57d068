"""Move with data (issue 13) against the fake Hetzner API, with real agents and real
mounts: bench/volume_move.py's timed moves, with PROVIDER=hetzner (docs/benchmarks.md).

The real control plane (USER_VOLUMES on, heartbeats and autoscaler every second, the real
hcloud client) talks to tests/fakes/hetzner.py on 127.0.0.1, whose volume actions
(create, attach, detach) run for `--action-seconds` (default 3) and lock the volume and
the server meanwhile, answering 423 `locked` as the real API does. This process plays the
hypervisor under the fake:
- each server the fake creates boots: a real agent process (`python -m agent`) started
  with the CONTROL_URL and BOOTSTRAP_TOKEN of that server's user data, on this machine's
  Docker engine, as the local provider starts one (so the agents' settings are the
  local-provider bench's); a server the fake deletes is powered off;
- each volume the fake holds is a sparse file of its size under the bench's temp
  directory on a loop device of its own (attached once, kept across attaches); while the
  volume is attached and its action has finished, its `linux_device`
  (/dev/disk/by-id/scsi-0HC_Volume_<id>) is a symlink to that loop device, which is
  where the agent looks for it. On Hetzner the device shows up on the server when the
  attach action has run, so the link appears then (polled every 20 ms) and goes as soon
  as a detach is asked.
The agent cannot be told another by-id directory (only `/dev/disk/by-id/...` devices
decode), so the links are made in /dev/disk/by-id itself: only names not there before
(the fake's ids start at a high number no real Hetzner volume here has, and an existing
name stops the bench), each removed at exit with the loop devices, and the directories
removed when the bench made them and they are empty. Needs root (losetup, mount).
Besides p50/p99 it prints each move's steps from the fake's call log: when the API
accepted the detach, the attach (after how many 423 `locked`), when the device appeared
and when the user ran, and how often an agent met a device not there yet.

    .venv/bin/python bench/volume_move_hetzner.py --runs 20 --action-seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker
from volume_move import report, timed_moves  # it puts the project root on sys.path

from control.capacity.providers.base import CreateRequest
from control.capacity.providers.local import LocalProvider
from tests.agent import images
from tests.agent.conftest import GOOD, purge_user, unmount_and_detach
from tests.agent.test_e2e import plane_settings
from tests.fakes.hetzner import HetznerFake, agent_dist, host_sized_type
from tests.fakes.hetzner_actions import busy
from tests.fixtures import ControlPlane, make_settings

BY_ID = Path("/dev/disk/by-id")
TICK = 0.02  # seconds between the hypervisor's looks at the fake
DETACH = "POST /volumes/{id}/actions/detach"
FIRST_ID = 970_000_000  # the fake's server and volume ids start here (see the docstring)


class Hypervisor:
    """Plays the machines under the fake: servers are agent processes (a LocalProvider
    under `work`), attached volumes are by-id links to loop devices."""

    def __init__(self, fake: HetznerFake, work: Path) -> None:
        self.fake = fake
        self.work = work
        self.machines = LocalProvider(str(work / "machines"), max_servers=16)
        self.booted: dict[int, str] = {}  # fake server id -> machine name
        self.loops: dict[int, str] = {}  # fake volume id -> /dev/loopN
        self.links: dict[Path, str] = {}  # link made -> the loop device it points to
        self.appeared: list[float] = []  # epoch seconds each link was made
        self.made_dirs: list[Path] = []

    async def run(self) -> None:
        try:
            while True:
                await self.servers()
                self.volumes()
                await asyncio.sleep(TICK)
        except Exception as exc:  # the moves would only time out: say why at once
            print(f"hypervisor failed: {exc!r}", file=sys.stderr)
            raise

    async def servers(self) -> None:
        for server_id, server in list(self.fake.servers.items()):
            if server_id not in self.booted:
                self.booted[server_id] = server["name"]
                await self.machines.create(self.boot_request(server))
        for server_id in [s for s in self.booted if s not in self.fake.servers]:
            await self.machines.delete(self.booted.pop(server_id))

    def boot_request(self, server: dict[str, Any]) -> CreateRequest:
        """The server's create request as the local provider takes it: it starts an agent
        with the user data's CONTROL_URL and BOOTSTRAP_TOKEN."""
        (sent,) = [r for r in self.fake.create_requests if r["name"] == server["name"]]
        return CreateRequest(
            server_id=server["labels"].get("clawfleet-server", server["name"]),
            name=server["name"],
            server_type="local",
            location=server["location"]["name"],
            user_data=sent["user_data"],
            labels=dict(server["labels"]),
        )

    def volumes(self) -> None:
        for volume_id, volume in list(self.fake.volumes.items()):
            if volume_id not in self.loops:
                self.loops[volume_id] = self.loop_device(volume_id, volume["size"])
            link = Path(volume["linux_device"])
            present = volume["server"] is not None and not busy(self.fake, "volume", volume_id)
            if present and link not in self.links:
                self.make_link(link, self.loops[volume_id])
            elif not present and link in self.links:
                link.unlink()
                del self.links[link]

    def loop_device(self, volume_id: int, size_gb: int) -> str:
        backing = self.work / "volumes" / f"{volume_id}.img"
        backing.parent.mkdir(exist_ok=True)
        with backing.open("xb") as f:  # a new volume is blank: mkfs is the agent's
            f.truncate(size_gb * 1024**3)
        done = subprocess.run(
            ["losetup", "--find", "--show", str(backing)],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    def make_link(self, link: Path, device: str) -> None:
        for folder in (link.parent.parent, link.parent):
            if not folder.exists():
                folder.mkdir()
                self.made_dirs.append(folder)
        link.symlink_to(device)  # FileExistsError: never replace a link not ours
        self.links[link] = device
        self.appeared.append(time.time())

    def clean_up(self) -> None:
        for server in self.machines._list({}):
            self.machines._delete(server.provider_id)  # stops the agent, unmounts
        unmount_and_detach(self.machines.root)
        for link, device in self.links.items():
            if os.readlink(link) == device:
                link.unlink()
        for device in self.loops.values():
            subprocess.run(["losetup", "-d", device], check=False)
        for folder in reversed(self.made_dirs):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: whatever else came there is kept


def hetzner_fake(action_seconds: float) -> HetznerFake:
    fake = HetznerFake(action_seconds=action_seconds)
    fake._ids = itertools.count(FIRST_ID)  # by-id names no test or real volume uses
    # The "server" is this machine: its type must have what the agent honestly reports.
    fake.server_types.append(host_sized_type())
    # AUTOSCALE_INTERVAL=1 s runs the autoscaler 20 times as often as production's
    # default; the bucket is raised so the run measures moves, not the rate limit.
    fake.rate_limit_limit = fake.rate_limit_remaining = 36_000
    return fake


def breakdown(
    fake: HetznerFake, appeared: list[float], starts: list[float], timings: list[float]
) -> None:
    """Per move, seconds from the decision to: the detach the API accepted, the attach it
    accepted (after how many 423 `locked`), the device showing up, the user running."""
    print("move: detach / attach (locked tries) / device / running, s after the decision")
    for index, (start, took) in enumerate(zip(starts, timings, strict=True), 1):
        end = start + took
        mine = [c for c in fake.calls if start <= c.at <= end]
        attach = "POST /volumes/{id}/actions/attach"
        locked = sum(1 for c in mine if c.endpoint == attach and c.status == 423)
        device = [t for t in appeared if start <= t <= end]
        detached = _first([c.at for c in mine if c.endpoint == DETACH and c.status == 201], start)
        attached = _first([c.at for c in mine if c.endpoint == attach and c.status == 201], start)
        print(f"{index}: {detached} / {attached} ({locked}) / {_first(device, start)} / {took:.2f}")


def _first(times: list[float], start: float) -> str:
    return f"{times[0] - start:.2f}" if times else "-"


async def measure(runs: int, action_seconds: float, work: Path) -> list[float]:
    fake = hetzner_fake(action_seconds)
    await fake.start()
    hypervisor = Hypervisor(fake, work)
    playing = asyncio.create_task(hypervisor.run())
    settings = make_settings(
        work,
        **plane_settings(),
        provider="hetzner",
        hetzner_api_token=fake.token,
        hetzner_api_endpoint=fake.url,
        hetzner_locations=("nbg1",),
        hetzner_server_types=("cxhost",),
        agent_dist_dir=agent_dist(work / "dist"),
        user_volumes=True,
        max_servers=2,
        autoscale_interval=1.0,
    )
    control = ControlPlane(settings)
    client = docker.from_env(timeout=60)
    images.build(client, GOOD, healthy=True)
    users: list[str] = []
    await control.start()
    try:
        calls = len(fake.calls)
        starts: list[float] = []
        timings = await timed_moves(control, client, users, runs, starts)
        print(f"Hetzner API calls during the moves: {len(fake.calls) - calls}")
        breakdown(fake, hypervisor.appeared, starts, timings)
        logs = (work / "machines").glob("*/agent.log")
        waits = sum(log.read_text().count("is the volume attached?") for log in logs)
        print(f"agents' log lines of a volume whose device was not there yet: {waits}")
        return timings
    finally:
        await control.close()
        playing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await playing
        hypervisor.clean_up()
        for user in users:
            purge_user(client, user)
        client.close()
        await fake.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument(
        "--action-seconds",
        type=float,
        default=3.0,
        help="how long each Hetzner volume action runs (locks, device appearance)",
    )
    args = parser.parse_args()
    if any(BY_ID.glob(f"scsi-0HC_Volume_{FIRST_ID // 1000}*")):
        raise SystemExit(f"{BY_ID} already has volumes named like the bench's: not touching it")
    load_before = os.getloadavg()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="volume-move-hetzner-") as tmp:
        timings = asyncio.run(measure(args.runs, args.action_seconds, Path(tmp)))
    print(f"Hetzner volume action latency assumed: {args.action_seconds} s per action")
    print(f"wall time: {time.time() - started:.0f} s")
    report(timings, load_before)


if __name__ == "__main__":
    main()
