"""The worker protocol (docs/protocol.md) and the agent wheel new workers install.

Contract:
- `POST /v1/agent/register` (bootstrap token), `POST /v1/agent/heartbeat` and
  `GET /v1/agent/assignments?after=&wait=` (worker signature): each handler
  authenticates first (control/workers/auth.py, through `Fleet.auth`), then keeps the
  worker to its pace (control/api/agent_pace.py: 429 past AGENT_CALLS_PER_SECOND), refuses a
  repeated query parameter, decodes and validates the body (400 on any shape error,
  before anything is written), calls one Fleet operation and encodes its reply.
  Assignments answer 304 when the worker's generation is still `after` after `wait` s.
- `GET /v1/dist/{filename}`: the agent wheel, public code its installer checks by
  sha256; 404 for any other name, and when no wheel is served (the local provider).
These paths carry no admin credential: the auth middleware leaves them to the above.
"""

from __future__ import annotations

import time

from aiohttp import web

from control.api.bodies import (
    decode_body,
    msgspec_response,
    query_number,
    refuse_duplicate_parameters,
)
from control.appkeys import AGENT_PACE, DIST, FLEET
from control.errors import NotFound
from shared import protocol

agent_routes = web.RouteTableDef()


@agent_routes.post("/v1/agent/register")
async def register(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    caller = await fleet.auth.bootstrap(request)
    refuse_duplicate_parameters(request)
    req = decode_body(caller.body, protocol.RegisterRequest)
    return msgspec_response(await fleet.register(caller, req), status=201)


@agent_routes.post("/v1/agent/heartbeat")
async def heartbeat(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    caller = await fleet.auth.worker(request)
    request.app[AGENT_PACE].admit("heartbeat", caller.key_id, time.monotonic())
    refuse_duplicate_parameters(request)
    hb = decode_body(caller.body, protocol.Heartbeat)
    return msgspec_response(await fleet.heartbeat(caller, hb))


@agent_routes.get("/v1/agent/assignments")
async def get_assignments(request: web.Request) -> web.StreamResponse:
    fleet = request.app[FLEET]
    caller = await fleet.auth.worker(request)
    request.app[AGENT_PACE].admit("poll", caller.key_id, time.monotonic())
    refuse_duplicate_parameters(request)
    after = query_number(request, "after", 0)
    wait = query_number(request, "wait", 0)
    result = await fleet.assignments(caller, after, float(wait))
    if result is None:
        return web.Response(status=304)
    return msgspec_response(result)


@agent_routes.get("/v1/dist/{filename}")
async def agent_wheel(request: web.Request) -> web.StreamResponse:
    """The agent wheel new workers install (their script checks its sha256)."""
    dist = request.app.get(DIST)
    if dist is None or request.match_info["filename"] != dist.filename:
        raise NotFound("no such file")
    return web.FileResponse(dist.path, headers={"Content-Type": "application/octet-stream"})
