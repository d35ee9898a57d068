"""The admin API (`/v1/*` outside the agent, Stripe and dist paths) and `/healthz`.

Contract: every admin route needs the admin token or a dashboard session (checked by
control/api/middleware.py `admin_auth` before a handler runs). Handlers stay thin:
decode and validate the body (400 on any shape error, before anything is written),
call one Fleet operation, answer with the JSON shapes of control/api/views.py; an
unknown server or user is 404. The listings of servers and users are pages, and
`/v1/summary` the fleet's headline numbers (control/api/admin_pages.py). `/healthz` is liveness only and needs no credential:
it answers 200 with the provider's and the DNS provider's states, whatever they are.
"""

from __future__ import annotations

import time
from typing import Annotated

import msgspec
from aiohttp import web

from control.api import admin_pages, views
from control.api.bodies import (
    decode_body,
    msgspec_response,
    query_number,
    refuse_duplicate_parameters,
)
from control.appkeys import DNS_HEALTH, FIREWALL_SYNC, FLEET, INBOX, PROVIDER_HEALTH
from control.billing import rules
from control.clock import iso
from control.errors import BadRequest, NotFound
from control.users import access, secrets, signin_links
from control.volumes import relocate_start
from control.workers.trust import Stated

admin_routes = web.RouteTableDef()


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


class MoveUser(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    server_id: str | None = None
    # Another location than the user's volume: through a backup and a restore (issue 13).
    location: Annotated[str, msgspec.Meta(pattern=r"\A[a-z0-9][a-z0-9-]{0,31}\Z")] | None = None


@admin_routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    # Liveness only: a provider or DNS outage is a detail here, not a failure.
    return msgspec_response(
        {
            "status": "ok",
            "provider": request.app[PROVIDER_HEALTH].as_json(),
            "dns": request.app[DNS_HEALTH].as_json(),
        }
    )


@admin_routes.post("/v1/join-tokens")
async def create_join_token(request: web.Request) -> web.Response:
    req = decode_body(await request.read(), JoinTokenRequest, empty_ok=True)
    if req.ttl_seconds is not None and not 60 <= req.ttl_seconds <= 7 * 86400:
        raise BadRequest("ttl_seconds: must be between 60 and 604800")
    stated = Stated(req.cpus, req.memory_mb, req.disk_gb)
    minted = await request.app[FLEET].mint_join_token(req.ttl_seconds, stated)
    return msgspec_response(
        {"token": minted.token, "expires_at": iso(minted.expires_at)}, status=201
    )


@admin_routes.get("/v1/servers")
async def list_servers(request: web.Request) -> web.Response:
    """A page of servers (control/api/admin_pages.py: limit, cursor, status)."""
    fleet = request.app[FLEET]
    refuse_duplicate_parameters(request)
    page = admin_pages.parse_page("servers", request.query)
    servers, cursor = await admin_pages.server_page(fleet, page, _firewall(request))
    return msgspec_response(
        {
            "servers": servers,
            "next_cursor": cursor,
            "volume_cost": await views.volume_cost(fleet),  # shown beside the servers' cost
            **_health(request),
        }
    )


@admin_routes.get("/v1/summary")
async def fleet_summary(request: web.Request) -> web.Response:
    """The dashboard's headline numbers, from aggregate queries (admin_pages.summary)."""
    return msgspec_response({**await admin_pages.summary(request.app[FLEET]), **_health(request)})


def _health(request: web.Request) -> dict[str, object]:
    # The dashboard's banner: the cloud and DNS providers' states.
    return {
        "provider": request.app[PROVIDER_HEALTH].as_json(),
        "dns": request.app[DNS_HEALTH].as_json(),
    }


@admin_routes.get("/v1/servers/{server_id}")
async def get_server(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    found = await views.servers(fleet, request.match_info["server_id"], _firewall(request))
    if not found:
        raise NotFound(f"no server {request.match_info['server_id']}")
    return msgspec_response(found[0])


@admin_routes.post(r"/v1/servers/{server_id}/{action:cordon|uncordon|drain}")
async def server_action(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    server_id = request.match_info["server_id"]
    await fleet.set_server_flag(server_id, request.match_info["action"])
    return msgspec_response((await views.servers(fleet, server_id, _firewall(request)))[0])


def _firewall(request: web.Request) -> dict[str, object] | None:
    """The edge firewall's state for the server views (None before its context runs)."""
    app = request.app
    return app[FIREWALL_SYNC].status() if FIREWALL_SYNC in app else None


@admin_routes.post("/v1/users")
async def create_user(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    req = decode_body(await request.read(), CreateUser)
    await fleet.create_user(req.user_id, req.subdomain, req.plan)
    return msgspec_response((await views.users(fleet, req.user_id))[0], status=201)


@admin_routes.get("/v1/users")
async def list_users(request: web.Request) -> web.Response:
    """A page of users (control/api/admin_pages.py: limit, cursor, state, server)."""
    refuse_duplicate_parameters(request)
    page = admin_pages.parse_page("users", request.query)
    users, cursor = await admin_pages.user_page(request.app[FLEET], page)
    return msgspec_response({"users": users, "next_cursor": cursor})


@admin_routes.get("/v1/users/{user_id}")
async def get_user(request: web.Request) -> web.Response:
    found = await views.users(request.app[FLEET], request.match_info["user_id"])
    if not found:
        raise NotFound(f"no user {request.match_info['user_id']}")
    return msgspec_response(found[0])


@admin_routes.delete("/v1/users/{user_id}")
async def delete_user(request: web.Request) -> web.Response:
    """The user's container goes away; its data stays RETENTION_DAYS, then is purged."""
    return await _user_action(request, "deprovision")


@admin_routes.post(r"/v1/users/{user_id}/{action:suspend|resume}")
async def user_action(request: web.Request) -> web.Response:
    goal: rules.Target = "suspend" if request.match_info["action"] == "suspend" else "run"
    return await _user_action(request, goal)


async def _user_action(request: web.Request, goal: rules.Target) -> web.Response:
    fleet = request.app[FLEET]
    user_id = request.match_info["user_id"]
    await fleet.set_user_target(user_id, goal, reason="operator")
    return msgspec_response((await views.users(fleet, user_id))[0])


@admin_routes.post("/v1/users/{user_id}/move")
async def move_user(request: web.Request) -> web.Response:
    """Moves a running user (make-before-break) to `server_id`, or the best fit; to
    another location than its volume's (`location`, or such a server) through a backup
    and a restore (control/volumes/relocate_start.py)."""
    fleet = request.app[FLEET]
    user_id = request.match_info["user_id"]
    req = decode_body(await request.read(), MoveUser, empty_ok=True)
    if await relocate_start.crosses_locations(fleet.store, user_id, req.server_id, req.location):
        placement = (fleet.plans, fleet.reserve, fleet.needs, fleet.room_index)
        await relocate_start.start(
            fleet.store,
            fleet.settings,
            placement,
            fleet.board.notify,
            user_id,
            req.server_id,
            req.location,
        )
    else:
        await fleet.move_user(user_id, req.server_id)
    return msgspec_response((await views.users(fleet, user_id))[0])


@admin_routes.post("/v1/users/{user_id}/restart")
async def restart_user(request: web.Request) -> web.Response:
    """Replaces the user's container on its server; its state is kept (409 `not_running`
    unless it is placed)."""
    fleet = request.app[FLEET]
    user_id = request.match_info["user_id"]
    await fleet.restart_user(user_id)
    return msgspec_response((await views.users(fleet, user_id))[0])


@admin_routes.get("/v1/users/{user_id}/access")
async def user_access(request: web.Request) -> web.Response:
    """What the operator's platform hands its customer: the agent's URL and gateway token."""
    fleet = request.app[FLEET]
    user_id = request.match_info["user_id"]
    return msgspec_response(
        await access.details(fleet.store, fleet.keyring, fleet.settings, user_id)
    )


@admin_routes.post("/v1/users/{user_id}/rotate-token")
async def rotate_token(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    user_id = request.match_info["user_id"]
    await fleet.rotate_token(user_id)
    return msgspec_response(
        await access.details(fleet.store, fleet.keyring, fleet.settings, user_id)
    )


@admin_routes.post("/v1/users/{user_id}/signin-link")
async def signin_link(request: web.Request) -> web.Response:
    """A one-time sign-in URL for the user's gated gateway (docs/tenants.md)."""
    fleet = request.app[FLEET]
    link = await signin_links.signin_link(
        fleet.store, fleet.keyring, fleet.settings, request.match_info["user_id"], time.time()
    )
    return msgspec_response({"url": link.url, "expires_at": iso(link.expires_at)}, status=201)


@admin_routes.get("/v1/users/{user_id}/secrets")
async def list_secrets(request: web.Request) -> web.Response:
    """Names only: no reply ever carries a secret's value."""
    fleet = request.app[FLEET]
    names = await secrets.names(fleet.store, fleet.keyring, request.match_info["user_id"])
    allowed = list(fleet.settings.tenant_profile.secret_names)
    return msgspec_response({"names": names, "allowed": allowed})


@admin_routes.put("/v1/users/{user_id}/secrets")
async def put_secrets(request: web.Request) -> web.Response:
    """Merges {"NAME": "value" | null}; a change restarts the container with its state."""
    fleet = request.app[FLEET]
    user_id = request.match_info["user_id"]
    changes = decode_body(await request.read(), dict[str, str | None])
    names = await fleet.set_secrets(user_id, changes)
    allowed = list(fleet.settings.tenant_profile.secret_names)
    return msgspec_response({"names": names, "allowed": allowed})


@admin_routes.get("/v1/events")
async def list_events(request: web.Request) -> web.Response:
    limit = min(query_number(request, "limit", 100), 1000)
    before = query_number(request, "before", 0) or None
    failing = await request.app[INBOX].failing() if INBOX in request.app else []
    return msgspec_response(
        {
            "events": await views.events(request.app[FLEET].store, limit, before),
            # Stripe events accepted but failing to apply, still being retried.
            "failing_webhooks": failing,
        }
    )
