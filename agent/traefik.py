"""Traefik file-provider routes, one file per user.

Contract: `route_file(user_id)` is `<TRAEFIK_DYNAMIC_DIR>/clawfleet-<user_id>.yaml`;
its content routes `Host(<route_host>)` to `http://127.0.0.1:<published port>`. The
file is JSON (a subset of YAML, so no YAML library and no escaping surprises), written
atomically and only when its content changes, so Traefik reloads only on real change.
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

PREFIX = "clawfleet-"
SUFFIX = ".yaml"
_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}$")


@dataclass(frozen=True)
class RouteOptions:
    entrypoints: tuple[str, ...] = ("websecure",)
    tls: bool = True
    cert_resolver: str = ""


def route_file(directory: Path, user_id: str) -> Path:
    return directory / f"{PREFIX}{user_id}{SUFFIX}"


def render(user_id: str, host: str, port: int, options: RouteOptions) -> bytes:
    if not _HOST.match(host):
        raise ValueError(f"route host {host!r} is not a host name")
    name = f"{PREFIX}{user_id}"
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


def write_route(directory: Path, user_id: str, host: str, port: int, options: RouteOptions) -> bool:
    """True when the file changed."""
    path = route_file(directory, user_id)
    content = render(user_id, host, port, options)
    try:
        if path.read_bytes() == content:
            return False
    except FileNotFoundError:
        pass
    atomic_write(path, content, mode=0o644)
    return True


def remove_route(directory: Path, user_id: str) -> bool:
    try:
        route_file(directory, user_id).unlink()
    except FileNotFoundError:
        return False
    return True


def routed_users(directory: Path) -> set[str]:
    try:
        names: Iterable[str] = [p.name for p in directory.iterdir()]
    except FileNotFoundError:
        return set()
    return {
        n[len(PREFIX) : -len(SUFFIX)] for n in names if n.startswith(PREFIX) and n.endswith(SUFFIX)
    }


def prune(directory: Path, keep: set[str]) -> set[str]:
    removed = set()
    for user in routed_users(directory) - keep:
        with contextlib.suppress(OSError):
            if remove_route(directory, user):
                removed.add(user)
    return removed
