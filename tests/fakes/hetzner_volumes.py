"""Volumes for the fake Hetzner Cloud API; tests/fakes/hetzner.py registers these routes on
its app, so faults (`inject`, `chaos`, `delay`), the rate-limit budget, auth and the error
envelope work here as for servers.

Served under /v1 with the shapes of ../shared/reference/hetzner-cloud-openapi.yml:
GET /volumes (filters `name`, `label_selector`, `status`; `page`/`per_page`), POST /volumes
(`name`, `size`, `labels`, `format`, `automount`, and `location` or `server`),
GET/PUT/DELETE /volumes/{id}, POST /volumes/{id}/actions/attach (`server`, `automount`),
.../detach, .../resize (`size`) and .../change_protection (`delete`).

State: `fake.volumes` {id: volume}. An attached volume's `server` is the server's id and the
volume's id is in that server's `volumes`. `linux_device` is /dev/disk/by-id/scsi-0HC_Volume_<id>.
A volume's status is `creating` while its create action runs, then `available`.
Actions (create_volume, attach_volume, detach_volume, resize_volume, change_protection)
run for `fake.action_seconds` and lock the volume and the server concerned meanwhile
(tests/fakes/hetzner_actions.py).

Errors (the reference names only `no_space_left_in_location`, which a test injects; the rest
follow the general error table, hcloud-go's error codes and errors observed from the real API):
- 404 `not_found`: no such volume.
- 422 `invalid_input` (with `details.fields`): bad name, size outside 10..10240, resize that
  does not grow, unknown location or server, both or neither of location and server,
  `automount` without `server`, `format` other than ext4/xfs, invalid labels, and a server in
  another location than the volume ("volume and server must be in the same location").
- 409 `uniqueness_error`: the name is taken.
- 422 `volume_already_attached`: attach while attached (even to that server), delete while
  attached.
- 422 `invalid_input`: detach while not attached.
- 403 `resource_limit_exceeded`: the server has MAX_VOLUMES_PER_SERVER (16) attached.
- 423 `locked`: an action still runs on the volume, or on the server to attach to or detach from.
- 423 `protected`: delete with delete protection on.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from tests.fakes.hetzner import (
    _BODY,
    HetznerFake,
    Json,
    _error,
    _field,
    _filtered_page,
    _found,
    _invalid,
    _now_iso,
)
from tests.fakes.hetzner_actions import busy, settle, start_action

VOLUME_ENDPOINTS = frozenset(
    {
        "GET /volumes",
        "POST /volumes",
        "GET /volumes/{id}",
        "PUT /volumes/{id}",
        "DELETE /volumes/{id}",
        "POST /volumes/{id}/actions/attach",
        "POST /volumes/{id}/actions/detach",
        "POST /volumes/{id}/actions/resize",
        "POST /volumes/{id}/actions/change_protection",
    }
)
MAX_VOLUMES_PER_SERVER = 16  # docs.hetzner.com/cloud/volumes/faq
MIN_SIZE, MAX_SIZE = 10, 10240
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,62}[A-Za-z0-9])?$")
_FORMATS = ("ext4", "xfs")


def register(app: web.Application, fake: HetznerFake) -> None:
    routes = _VolumeRoutes(fake)
    app.router.add_get("/v1/volumes", routes.list_all)
    app.router.add_post("/v1/volumes", routes.create)
    app.router.add_get("/v1/volumes/{id}", routes.get)
    app.router.add_put("/v1/volumes/{id}", routes.update)
    app.router.add_delete("/v1/volumes/{id}", routes.delete)
    app.router.add_post("/v1/volumes/{id}/actions/attach", routes.attach)
    app.router.add_post("/v1/volumes/{id}/actions/detach", routes.detach)
    app.router.add_post("/v1/volumes/{id}/actions/resize", routes.resize)
    app.router.add_post("/v1/volumes/{id}/actions/change_protection", routes.protect)
    app.middlewares.append(routes.sync)


def bad_labels(labels: Any) -> bool:
    return not isinstance(labels, dict) or any(
        not isinstance(k, str) or not isinstance(v, str) or len(k) > 63 or len(v) > 63
        for k, v in labels.items()
    )


_volume_route = _found("volume", lambda fake: fake.volumes)


class _VolumeRoutes:
    def __init__(self, fake: HetznerFake) -> None:
        self.fake = fake

    @web.middleware
    async def sync(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Before any request: finished actions end, and volumes they created are available."""
        settle(self.fake)
        for volume in self.fake.volumes.values():
            if volume["status"] == "creating" and not busy(self.fake, "volume", volume["id"]):
                volume["status"] = "available"
        response: web.StreamResponse = await handler(request)
        return response

    async def list_all(self, request: web.Request) -> web.StreamResponse:
        statuses = request.query.getall("status", [])
        return _filtered_page(
            request,
            "volumes",
            self.fake.volumes.values(),
            lambda volume: not statuses or volume["status"] in statuses,
        )

    @_volume_route
    async def get(self, request: web.Request, volume: Json) -> web.StreamResponse:
        return web.json_response({"volume": volume})

    async def create(self, request: web.Request) -> web.StreamResponse:
        body = request[_BODY]
        if not isinstance(body, dict):
            return _error(400, "json_error", "invalid JSON in request body")
        problem = self._check_create(body)
        if problem is not None:
            return problem
        server = self.fake.servers.get(body["server"]) if "server" in body else None
        location = server["location"] if server else self._location(body["location"])
        assert location is not None  # _check_create found it
        volume_id = next(self.fake._ids)
        volume: Json = {
            "id": volume_id,
            "created": _now_iso(),
            "name": body["name"],
            "server": None,
            "location": location,
            "size": body["size"],
            "linux_device": f"/dev/disk/by-id/scsi-0HC_Volume_{volume_id}",
            "protection": {"delete": False},
            "labels": dict(body.get("labels") or {}),
            "status": "available" if self.fake.action_seconds <= 0 else "creating",
            "format": body.get("format"),
        }
        self.fake.volumes[volume_id] = volume
        touched = [("volume", volume_id)] + ([("server", server["id"])] if server else [])
        action = start_action(self.fake, "create_volume", touched)
        next_actions = []
        if server is not None:
            next_actions.append(self._attach(volume, server))
        return web.json_response(
            {"volume": volume, "action": action, "next_actions": next_actions}, status=201
        )

    def _check_create(self, body: Json) -> web.Response | None:
        name = body.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            return _invalid("name", "is invalid")
        if any(v["name"] == name for v in self.fake.volumes.values()):
            return _error(409, "uniqueness_error", "volume name is already used", _field("name"))
        size = body.get("size")
        if not _size_ok(size):
            return _invalid("size", f"must be between {MIN_SIZE} and {MAX_SIZE}")
        if ("location" in body) == ("server" in body):
            return _invalid("location", "exactly one of location and server is required")
        if body.get("format") is not None and body.get("format") not in _FORMATS:
            return _invalid("format", "must be ext4 or xfs")
        if "labels" in body and bad_labels(body["labels"]):
            return _invalid("labels", "invalid label")
        if "location" in body:
            if body.get("automount"):
                return _invalid("automount", "requires server")
            if self._location(body["location"]) is None:
                return _invalid("location", "location not found")
            return None
        server = self.fake.servers.get(body["server"]) if isinstance(body["server"], int) else None
        if server is None:
            return _invalid("server", "server not found")
        return self._attach_problem(server)

    @_volume_route
    async def update(self, request: web.Request, volume: Json) -> web.StreamResponse:
        body = request[_BODY]
        if not isinstance(body, dict):
            return _error(400, "json_error", "invalid JSON in request body")
        name = body.get("name", volume["name"])
        if not isinstance(name, str) or not _NAME.match(name):
            return _invalid("name", "is invalid")
        taken = any(v["name"] == name and v is not volume for v in self.fake.volumes.values())
        if taken:
            return _error(409, "uniqueness_error", "volume name is already used", _field("name"))
        if "labels" in body and bad_labels(body["labels"]):
            return _invalid("labels", "invalid label")
        volume["name"] = name
        volume["labels"] = dict(body["labels"] if "labels" in body else volume["labels"])
        return web.json_response({"volume": volume})

    @_volume_route
    async def delete(self, request: web.Request, volume: Json) -> web.StreamResponse:
        if busy(self.fake, "volume", volume["id"]):
            return _locked("volume")
        if volume["protection"]["delete"]:
            return _error(423, "protected", "volume is delete protected")
        if volume["server"] is not None:
            return _error(422, "volume_already_attached", "volume is attached, detach it first")
        del self.fake.volumes[volume["id"]]
        return web.Response(status=204)

    @_volume_route
    async def attach(self, request: web.Request, volume: Json) -> web.StreamResponse:
        body = request[_BODY]
        if not isinstance(body, dict):
            return _error(400, "json_error", "invalid JSON in request body")
        raw = body.get("server")
        server = self.fake.servers.get(raw) if isinstance(raw, int) else None
        if server is None:
            return _invalid("server", "server not found")
        if busy(self.fake, "volume", volume["id"]):
            return _locked("volume")
        if volume["server"] is not None:
            return _error(422, "volume_already_attached", "volume is already attached")
        if server["location"]["name"] != volume["location"]["name"]:
            return _invalid("server", "volume and server must be in the same location")
        problem = self._attach_problem(server)
        if problem is not None:
            return problem
        return web.json_response({"action": self._attach(volume, server)}, status=201)

    def _attach_problem(self, server: Json) -> web.Response | None:
        if busy(self.fake, "server", server["id"]):
            return _locked("server")
        if len(server["volumes"]) >= MAX_VOLUMES_PER_SERVER:
            return _error(
                403,
                "resource_limit_exceeded",
                "maximum number of volumes already attached to the server",
                {"limits": [{"name": "volumes_per_server"}]},
            )
        return None

    def _attach(self, volume: Json, server: Json) -> Json:
        volume["server"] = server["id"]
        server["volumes"].append(volume["id"])
        touched = [("server", server["id"]), ("volume", volume["id"])]
        return start_action(self.fake, "attach_volume", touched)

    @_volume_route
    async def detach(self, request: web.Request, volume: Json) -> web.StreamResponse:
        if busy(self.fake, "volume", volume["id"]):
            return _locked("volume")
        server_id = volume["server"]
        if server_id is None:
            return _invalid("server", "volume is not attached")
        if busy(self.fake, "server", server_id):
            return _locked("server")
        volume["server"] = None
        server = self.fake.servers.get(server_id)
        if server is not None:
            server["volumes"].remove(volume["id"])
        touched = [("server", server_id), ("volume", volume["id"])]
        return web.json_response(
            {"action": start_action(self.fake, "detach_volume", touched)}, status=201
        )

    @_volume_route
    async def resize(self, request: web.Request, volume: Json) -> web.StreamResponse:
        body = request[_BODY]
        size = body.get("size") if isinstance(body, dict) else None
        if not _size_ok(size):
            return _invalid("size", f"must be between {MIN_SIZE} and {MAX_SIZE}")
        if busy(self.fake, "volume", volume["id"]):
            return _locked("volume")
        if size <= volume["size"]:
            return _invalid("size", "must be greater than the current size")
        volume["size"] = size
        action = start_action(self.fake, "resize_volume", [("volume", volume["id"])])
        return web.json_response({"action": action}, status=201)

    @_volume_route
    async def protect(self, request: web.Request, volume: Json) -> web.StreamResponse:
        body = request[_BODY]
        delete = body.get("delete") if isinstance(body, dict) else None
        if delete is not None and not isinstance(delete, bool):
            return _invalid("delete", "must be a boolean")
        if busy(self.fake, "volume", volume["id"]):
            return _locked("volume")
        if delete is not None:
            volume["protection"]["delete"] = delete
        action = start_action(self.fake, "change_protection", [("volume", volume["id"])])
        return web.json_response({"action": action}, status=201)

    def _location(self, id_or_name: Any) -> Json | None:
        return next(
            (
                loc
                for loc in self.fake.locations
                if str(id_or_name) in (loc["name"], str(loc["id"]))
            ),
            None,
        )


def _size_ok(size: Any) -> bool:
    return isinstance(size, int) and not isinstance(size, bool) and MIN_SIZE <= size <= MAX_SIZE


def _locked(what: str) -> web.Response:
    return _error(423, "locked", f"{what} is locked: an action is running")
