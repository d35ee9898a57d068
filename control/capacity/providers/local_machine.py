"""What deleting a local server does to what it held, as deleting a real server would.

Contract: `power_off(home)` runs after the worker's agent process is gone (local.py's
delete). A real server's deletion takes its containers, networks and mounts with it; a
local worker's objects live on in the machine's shared Docker engine and mount table,
where a container left running would hold the user's container name (and write to the
user's volume) while the user is started on another worker. So it removes the Docker
containers and networks labelled with the worker's ids (`clawfleet.worker`, from
`<home>/state/credentials.json`: the current id and those it held before; never an
object of another worker or an unlabelled one) and unmounts every mount under
`<home>/state/mounts`. It never deletes a Docker volume or a volume's file: those are
data (a Docker volume is swept by its own rules, a loop file by the volume's delete).
A loop device left idle is detached by any agent's next release (agent/volumes.py).
Failures are logged, never raised: a deleted server is gone whatever it left behind.

`free_port()` is a free TCP port on 127.0.0.1 (a worker's sign-in verifier port).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import subprocess
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

UMOUNT_TIMEOUT = 60.0
DOCKER_TIMEOUT = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_ids(home: Path) -> list[str]:
    """The ids the worker's agent registered under (none before it registered)."""
    try:
        creds = json.loads((home / "state" / "credentials.json").read_text())
    except (OSError, ValueError):
        return []
    ids = [creds.get("worker_id"), *(creds.get("previous") or [])]
    return [i for i in ids if isinstance(i, str) and i]


def mounts_under(mountinfo: str, folder: Path) -> list[str]:
    """Mount points directly under `folder`, deepest last-mounted first."""
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and Path(fields[4]).parent == folder:
            found.append(fields[4])
    return list(reversed(found))


def power_off(home: Path) -> None:
    for worker in worker_ids(home):
        _remove_docker_objects(worker)
    mounts = (home / "state" / "mounts").resolve()
    with contextlib.suppress(OSError):
        for target in mounts_under(Path("/proc/self/mountinfo").read_text(), mounts):
            done = subprocess.run(  # noqa: S603 - fixed argv, no shell
                ["umount", target],  # noqa: S607 - umount from PATH, as the agent runs it
                capture_output=True,
                timeout=UMOUNT_TIMEOUT,
                check=False,
            )
            if done.returncode != 0:
                log.warning("deleted local server: cannot unmount %s: %s", target, done.stderr)


def _remove_docker_objects(worker: str) -> None:
    import docker  # only the local provider needs the Docker SDK

    try:
        client: Any = docker.from_env(timeout=DOCKER_TIMEOUT)
    except docker.errors.DockerException as exc:
        log.warning("deleted local server: no Docker engine to clean up: %s", exc)
        return
    flt = {"label": ["clawfleet.managed=true", f"clawfleet.worker={worker}"]}
    try:
        for container in client.containers.list(all=True, filters=flt, ignore_removed=True):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        for network in client.networks.list(filters=flt):
            with contextlib.suppress(docker.errors.NotFound):
                network.remove()
    except docker.errors.DockerException as exc:
        log.warning("deleted local server %s: Docker objects left: %s", worker, exc)
    finally:
        client.close()
