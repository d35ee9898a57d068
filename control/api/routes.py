"""HTTP routes: the worker protocol (/v1/agent/*), the admin API and /healthz.

Handlers stay thin: decode and validate the body (400 on any shape error, before
anything is written), call one Fleet operation, encode the reply.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Annotated, TypeVar

import msgspec
from aiohttp import web

from control import metrics
from control.api import views
from control.appkeys import DNS_HEALTH, DNS_SYNC, PROVIDER_HEALTH, SCALER, SETTINGS
from control.billing import rules
from control.billing.inbox import INBOX
from control.capacity.providers.health import PROVIDER_STATES
from control.clock import iso
from control.errors import BadRequest, NotFound
from control.fleet import FLEET
from control.workers.bootstrap import DIST
from control.workers.trust import Stated
from shared import protocol

T = TypeVar("T")
routes = web.RouteTableDef()
_INT = re.compile(r"[0-9]{1,18}")  # fullmatch only


class CreateUser(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    user_id: str
    subdomain: str
    plan: str = "default"


class JoinTokenRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ttl_seconds: int | None = None
    # What the server has: the most its agent may claim (docs/capacity.md).
    cpus: Annotated[int, msgspec.Meta(ge=1, le=4096)] | None = None
    memory_mb: Annotated[int, msgspec.Meta(ge=1, le=16 * 1024 * 1024)] | None = None
    disk_gb: Annotated[int, msgspec.Meta(ge=1, le=1024 * 1024)] | None = None


def decode_body(body: bytes, kind: type[T], *, empty_ok: bool = False) -> T:
    if not body.strip() and empty_ok:
        body = b"{}"
    try:
        return protocol.decode(body, kind)
    except protocol.ProtocolError as exc:
        raise BadRequest(f"malformed body: {exc}", code="malformed_body") from None


def msgspec_response(message: object, status: int = 200) -> web.Response:
    return web.Response(
        body=protocol.encode(message), status=status, content_type="application/json"
    )


def query_number(request: web.Request, name: str, default: int) -> int:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    if not _INT.fullmatch(value):
        raise BadRequest(f"{name}: expected a non-negative integer, got {value!r}")
    return int(value)


def refuse_duplicate_parameters(request: web.Request) -> None:
    """The signature covers every value of a parameter, a handler reads one: a request
    naming a parameter twice is refused (400) before anything is written."""
    counts = Counter(name for name, _ in request.query.items())
    repeated = sorted(name for name, count in counts.items() if count > 1)
    if repeated:
        raise BadRequest(
            f"query parameter(s) given more than once: {', '.join(repeated)}",
            code="duplicate_parameter",
        )


@routes.get("/metrics")
async def prometheus(request: web.Request) -> web.Response:
    metrics.check(request, request.app[SETTINGS].metrics_token)
    fleet = request.app[FLEET]
    m = request.app[metrics.METRICS]
    snapshot = await views.metrics_snapshot(fleet.store)
    if INBOX in request.app:
        snapshot["webhooks"] = await request.app[INBOX].counts()
    await metrics.refresh(m, snapshot)
    m.waiters.set(fleet.board.waiters())
    if SCALER in request.app:
        m.held_back.set(request.app[SCALER].state.held_back)
    health = request.app[PROVIDER_HEALTH]
    dns_health = request.app[DNS_HEALTH]
    for state in PROVIDER_STATES:
        m.provider_state.labels(state).set(1 if health.state == state else 0)
        m.dns_state.labels(state).set(1 if dns_health.state == state else 0)
    if DNS_SYNC in request.app:
        counters = request.app[DNS_SYNC].counters
        m.dns_rounds.set(counters.rounds)
        m.dns_changes.set(counters.changes)
        m.dns_errors.set(counters.errors)
    return metrics.response(m)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    # Liveness only: a provider or DNS outage is a detail here, not a failure.
    return web.json_response(
        {
            "status": "ok",
            "provider": request.app[PROVIDER_HEALTH].as_json(),
            "dns": request.app[DNS_HEALTH].as_json(),
        }
    )


# --- worker protocol --------------------------------------------------------------
@routes.post("/v1/agent/register")
async def register(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    caller = await fleet.auth.bootstrap(request)
    refuse_duplicate_parameters(request)
    req = decode_body(caller.body, protocol.RegisterRequest)
    return msgspec_response(await fleet.register(caller, req), status=201)


@routes.post("/v1/agent/heartbeat")
async def heartbeat(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    caller = await fleet.auth.worker(request)
    refuse_duplicate_parameters(request)
    hb = decode_body(caller.body, protocol.Heartbeat)
    return msgspec_response(await fleet.heartbeat(caller, hb))


@routes.get("/v1/agent/assignments")
async def get_assignments(request: web.Request) -> web.StreamResponse:
    fleet = request.app[FLEET]
    caller = await fleet.auth.worker(request)
    refuse_duplicate_parameters(request)
    after = query_number(request, "after", 0)
    wait = query_number(request, "wait", 0)
    result = await fleet.assignments(caller, after, float(wait))
    if result is None:
        return web.Response(status=304)
    return msgspec_response(result)


@routes.get("/v1/dist/{filename}")
async def agent_wheel(request: web.Request) -> web.StreamResponse:
    """The agent wheel new workers install (their script checks its sha256)."""
    dist = request.app.get(DIST)
    if dist is None or request.match_info["filename"] != dist.filename:
        raise NotFound("no such file")
    return web.FileResponse(dist.path, headers={"Content-Type": "application/octet-stream"})


# --- admin API --------------------------------------------------------------------
@routes.post("/v1/join-tokens")
async def create_join_token(request: web.Request) -> web.Response:
    req = decode_body(await request.read(), JoinTokenRequest, empty_ok=True)
    if req.ttl_seconds is not None and not 60 <= req.ttl_seconds <= 7 * 86400:
        raise BadRequest("ttl_seconds: must be between 60 and 604800")
    stated = Stated(req.cpus, req.memory_mb, req.disk_gb)
    minted = await request.app[FLEET].mint_join_token(req.ttl_seconds, stated)
    return web.json_response(
        {"token": minted.token, "expires_at": iso(minted.expires_at)}, status=201
    )


@routes.get("/v1/servers")
async def list_servers(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    provider = request.app[PROVIDER_HEALTH].as_json()  # the dashboard polls this call
    dns = request.app[DNS_HEALTH].as_json()
    return web.json_response(
        {"servers": await views.servers(fleet), "provider": provider, "dns": dns}
    )


@routes.get("/v1/servers/{server_id}")
async def get_server(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    found = await views.servers(fleet, request.match_info["server_id"])
    if not found:
        raise NotFound(f"no server {request.match_info['server_id']}")
    return web.json_response(found[0])


@routes.post(r"/v1/servers/{server_id}/{action:cordon|uncordon|drain}")
async def server_action(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    server_id = request.match_info["server_id"]
    await fleet.set_server_flag(server_id, request.match_info["action"])
    return web.json_response((await views.servers(fleet, server_id))[0])


@routes.post("/v1/users")
async def create_user(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    req = decode_body(await request.read(), CreateUser)
    await fleet.create_user(req.user_id, req.subdomain, req.plan)
    return web.json_response((await views.users(fleet.store, req.user_id))[0], status=201)


@routes.get("/v1/users")
async def list_users(request: web.Request) -> web.Response:
    return web.json_response({"users": await views.users(request.app[FLEET].store)})


@routes.get("/v1/users/{user_id}")
async def get_user(request: web.Request) -> web.Response:
    found = await views.users(request.app[FLEET].store, request.match_info["user_id"])
    if not found:
        raise NotFound(f"no user {request.match_info['user_id']}")
    return web.json_response(found[0])


@routes.delete("/v1/users/{user_id}")
async def delete_user(request: web.Request) -> web.Response:
    """The user's container goes away; its data stays RETENTION_DAYS, then is purged."""
    return await _user_action(request, "deprovision")


@routes.post(r"/v1/users/{user_id}/{action:suspend|resume}")
async def user_action(request: web.Request) -> web.Response:
    goal: rules.Target = "suspend" if request.match_info["action"] == "suspend" else "run"
    return await _user_action(request, goal)


async def _user_action(request: web.Request, goal: rules.Target) -> web.Response:
    fleet = request.app[FLEET]
    user_id = request.match_info["user_id"]
    await fleet.set_user_target(user_id, goal, reason="operator")
    return web.json_response((await views.users(fleet.store, user_id))[0])


class MoveUser(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    server_id: str | None = None


@routes.post("/v1/users/{user_id}/move")
async def move_user(request: web.Request) -> web.Response:
    """Moves a running user (make-before-break) to `server_id`, or the best fit."""
    fleet = request.app[FLEET]
    user_id = request.match_info["user_id"]
    req = decode_body(await request.read(), MoveUser, empty_ok=True)
    await fleet.move_user(user_id, req.server_id)
    return web.json_response((await views.users(fleet.store, user_id))[0])


@routes.get("/v1/users/{user_id}/access")
async def user_access(request: web.Request) -> web.Response:
    """What the operator's platform hands its customer: the agent's URL and gateway token."""
    return web.json_response(await request.app[FLEET].access(request.match_info["user_id"]))


@routes.post("/v1/users/{user_id}/rotate-token")
async def rotate_token(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    user_id = request.match_info["user_id"]
    await fleet.rotate_token(user_id)
    return web.json_response(await fleet.access(user_id))


@routes.get("/v1/events")
async def list_events(request: web.Request) -> web.Response:
    limit = min(query_number(request, "limit", 100), 1000)
    before = query_number(request, "before", 0) or None
    failing = await request.app[INBOX].failing() if INBOX in request.app else []
    return web.json_response(
        {
            "events": await views.events(request.app[FLEET].store, limit, before),
            # Stripe events accepted but failing to apply, still being retried.
            "failing_webhooks": failing,
        }
    )
