"""Traefik file-provider routes, one file per user.

Contract: `route_file(worker_id, user_id)` is
`<TRAEFIK_DYNAMIC_DIR>/clawfleet-<user_id>@<worker_id>.yaml` (`@` never occurs in a user
or worker id, so the name parses one way); its content routes `Host(<route_host>)` to
`http://127.0.0.1:<published port>`. The file is JSON (a subset of YAML, so no YAML
library and no escaping surprises), written atomically and only when its content
changes, so Traefik reloads only on real change. An agent prunes only files of its own
worker ids, so agents sharing a directory leave each other's routes alone; a file of
the older form `clawfleet-<user_id>.yaml` is removed only for a user the caller names.
Host names and user ids are full-matched before they reach a file name or a rule.
Traefik never gets the Docker socket: it watches this directory.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.state import atomic_write
from shared.names import dns_name_ok, user_id_ok

PREFIX = "clawfleet-"
SUFFIX = ".yaml"
_WORKER = re.compile(r"[a-z0-9-]{1,64}")


@dataclass(frozen=True)
class RouteOptions:
    entrypoints: tuple[str, ...] = ("websecure",)
    tls: bool = True
    cert_resolver: str = ""


def _checked(worker_id: str, user_id: str) -> None:
    if not _WORKER.fullmatch(worker_id) or not user_id_ok(user_id):
        raise ValueError(f"route for {user_id!r} on {worker_id!r}: not a user or worker id")


def route_file(directory: Path, worker_id: str, user_id: str) -> Path:
    _checked(worker_id, user_id)
    return directory / f"{PREFIX}{user_id}@{worker_id}{SUFFIX}"


def legacy_route_file(directory: Path, user_id: str) -> Path:
    _checked("legacy", user_id)
    return directory / f"{PREFIX}{user_id}{SUFFIX}"


def render(worker_id: str, user_id: str, host: str, port: int, options: RouteOptions) -> bytes:
    _checked(worker_id, user_id)
    if not dns_name_ok(host):
        raise ValueError(f"route host {host!r} is not a host name")
    # Unique per agent, so two agents' routers never collide in one Traefik.
    name = f"{PREFIX}{user_id}-{worker_id}"
    router: dict[str, Any] = {
        "rule": f"Host(`{host}`)",
        "service": name,
        "entryPoints": list(options.entrypoints),
    }
    if options.tls:
        router["tls"] = {"certResolver": options.cert_resolver} if options.cert_resolver else {}
    doc = {
        "http": {
            "routers": {name: router},
            "services": {
                name: {"loadBalancer": {"servers": [{"url": f"http://127.0.0.1:{port}"}]}}
            },
        }
    }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def write_route(
    directory: Path, worker_id: str, user_id: str, host: str, port: int, options: RouteOptions
) -> bool:
    """True when the file changed."""
    path = route_file(directory, worker_id, user_id)
    content = render(worker_id, user_id, host, port, options)
    try:
        if path.read_bytes() == content:
            return False
    except FileNotFoundError:
        pass
    atomic_write(path, content, mode=0o644)
    return True


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def routed_users(directory: Path, worker_id: str) -> set[str]:
    """Users with a route file of `worker_id` in `directory`."""
    tail = f"@{worker_id}{SUFFIX}"
    try:
        names: Iterable[str] = [p.name for p in directory.iterdir()]
    except FileNotFoundError:
        return set()
    found = {
        n[len(PREFIX) : -len(tail)] for n in names if n.startswith(PREFIX) and n.endswith(tail)
    }
    return {u for u in found if user_id_ok(u)}


def prune(
    directory: Path,
    worker_id: str,
    keep: set[str],
    *,
    stale_workers: Iterable[str] = (),
    legacy: Iterable[str] = (),
) -> set[str]:
    """Removes this agent's routes of users not in `keep`, every route of the ids it held
    before (`stale_workers`) and the older-form files of the `legacy` users; returns the
    users whose current route went."""
    removed = set()
    for user in routed_users(directory, worker_id) - keep:
        with contextlib.suppress(OSError):
            if _unlink(route_file(directory, worker_id, user)):
                removed.add(user)
    for old in stale_workers:
        for user in routed_users(directory, old):
            with contextlib.suppress(OSError):
                _unlink(route_file(directory, old, user))
    for user in legacy:
        with contextlib.suppress(OSError, ValueError):
            _unlink(legacy_route_file(directory, user))
    return removed
