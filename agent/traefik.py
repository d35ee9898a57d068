"""Traefik file-provider routes, one file per user.

Contract: `route_file(worker_id, user_id)` is
`<TRAEFIK_DYNAMIC_DIR>/clawfleet-<user_id>@<worker_id>.yaml` (`@` never occurs in a user
or worker id, so the name parses one way); its content routes `Host(<route_host>)` to
`http://127.0.0.1:<published port>`. A gated route (a spec with a sign-in key) adds a
router for `Host(<route_host>) && PathPrefix(/_clawfleet/)` to the agent's sign-in
verifier and puts the main router behind forward auth to that verifier, after deleting
any client-sent identity header (docs/signin.md). The file is JSON (a subset of YAML, so no YAML
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
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from agent.state import atomic_write
from shared.names import dns_name_ok, user_id_ok

PREFIX = "clawfleet-"
SUFFIX = ".yaml"
_WORKER = re.compile(r"[a-z0-9-]{1,64}")
_HEADER = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,63}")


@dataclass(frozen=True)
class RouteOptions:
    entrypoints: tuple[str, ...] = ("websecure",)
    tls: bool = True
    cert_resolver: str = ""
    auth_port: int = 8099  # the sign-in verifier (agent/verifier.py) on 127.0.0.1
    # Local demo only (TRAEFIK_CLIENT_ADDRESS): the X-Forwarded-For every request claims,
    # because a gateway behind a proxy refuses the loopback client a local browser is.
    client_address: str = ""


def _checked(worker_id: str, user_id: str) -> None:
    if not _WORKER.fullmatch(worker_id) or not user_id_ok(user_id):
        raise ValueError(f"route for {user_id!r} on {worker_id!r}: not a user or worker id")


def route_file(directory: Path, worker_id: str, user_id: str) -> Path:
    _checked(worker_id, user_id)
    return directory / f"{PREFIX}{user_id}@{worker_id}{SUFFIX}"


def legacy_route_file(directory: Path, user_id: str) -> Path:
    _checked("legacy", user_id)
    return directory / f"{PREFIX}{user_id}{SUFFIX}"


@dataclass(frozen=True)
class Gate:
    """The route is behind the sign-in verifier; it sets `identity_header` (may be "")."""

    identity_header: str = ""


def _router(rule: str, service: str, options: RouteOptions) -> dict[str, Any]:
    router: dict[str, Any] = {
        "rule": rule,
        "service": service,
        "entryPoints": list(options.entrypoints),
    }
    if options.tls:
        router["tls"] = {"certResolver": options.cert_resolver} if options.cert_resolver else {}
    return router


def _service(url: str) -> dict[str, Any]:
    return {"loadBalancer": {"servers": [{"url": url}]}}


def render(
    worker_id: str,
    user_id: str,
    host: str,
    port: int,
    options: RouteOptions,
    gate: Gate | None = None,
) -> bytes:
    _checked(worker_id, user_id)
    if not dns_name_ok(host):
        raise ValueError(f"route host {host!r} is not a host name")
    # Unique per agent, so two agents' routers never collide in one Traefik.
    name = f"{PREFIX}{user_id}-{worker_id}"
    router = _router(f"Host(`{host}`)", name, options)
    http: dict[str, Any] = {
        "routers": {name: router},
        "services": {name: _service(f"http://127.0.0.1:{port}")},
    }
    if gate is not None:
        _add_gate(http, name, host, options, gate)
    if options.client_address:
        ip_address(options.client_address)  # ValueError before it reaches a header
        http.setdefault("middlewares", {})[f"{name}-client"] = {
            "headers": {"customRequestHeaders": {"X-Forwarded-For": options.client_address}}
        }
        router["middlewares"] = [f"{name}-client", *router.get("middlewares", [])]
    return (json.dumps({"http": http}, indent=2, sort_keys=True) + "\n").encode()


def _add_gate(
    http: dict[str, Any], name: str, host: str, options: RouteOptions, gate: Gate
) -> None:
    """Sign-in paths go to the verifier; everything else passes forward auth first.
    The client's own identity header is deleted before forward auth, which then sets
    it from the verifier's answer: a forged one never reaches the container."""
    if gate.identity_header and not _HEADER.fullmatch(gate.identity_header):
        raise ValueError(f"identity header {gate.identity_header!r} is not a header name")
    verifier_url = f"http://127.0.0.1:{options.auth_port}"
    signin = _router(f"Host(`{host}`) && PathPrefix(`/_clawfleet/`)", f"{name}-signin", options)
    signin["priority"] = 10_000  # above the host's catch-all router
    http["routers"][f"{name}-signin"] = signin
    http["services"][f"{name}-signin"] = _service(verifier_url)
    middlewares: dict[str, Any] = {
        f"{name}-auth": {
            "forwardAuth": {
                "address": f"{verifier_url}/_clawfleet/auth",
                "trustForwardHeader": False,
                "authResponseHeaders": [gate.identity_header] if gate.identity_header else [],
            }
        }
    }
    chain = [f"{name}-auth"]
    if gate.identity_header:
        # An empty value makes Traefik delete the header.
        middlewares[f"{name}-strip"] = {
            "headers": {"customRequestHeaders": {gate.identity_header: ""}}
        }
        chain.insert(0, f"{name}-strip")
    http["middlewares"] = middlewares
    http["routers"][name]["middlewares"] = chain


def write_route(
    directory: Path,
    worker_id: str,
    user_id: str,
    host: str,
    port: int,
    options: RouteOptions,
    gate: Gate | None = None,
) -> bool:
    """True when the file changed."""
    path = route_file(directory, worker_id, user_id)
    content = render(worker_id, user_id, host, port, options, gate)
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
