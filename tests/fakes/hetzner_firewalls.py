"""Firewalls for the fake Hetzner Cloud API; tests/fakes/hetzner.py registers these routes on
its app, so faults (`inject`, `chaos`, `delay`), the rate-limit budget, auth and the error
envelope work here as for servers.

Served under /v1 with the shapes of ../shared/reference/hetzner-cloud-openapi.yml:
GET /firewalls (filters `name`, `label_selector`; `page`/`per_page`), POST /firewalls (`name`,
`labels`, `rules`, `apply_to`), GET/PUT/DELETE /firewalls/{id}, POST
/firewalls/{id}/actions/set_rules, .../apply_to_resources and .../remove_from_resources.

State: `fake.firewalls` {id: firewall}. A rule always carries all six keys (`description`,
`direction`, `source_ips`, `destination_ips`, `protocol`, `port`; unused ones [] or null);
CIDRs are stored in canonical form. `applied_to` lists what it was applied to; a
`label_selector` entry's `applied_to_resources` are the fake's servers matching it now
(re-resolved before every request, so a server created or relabelled later is covered), and
each server's `public_net.firewalls` lists [{id, status: "applied"}] for every firewall
reaching it, directly or by selector. Deleting a server drops its direct applications.
Actions (set_firewall_rules, apply_firewall, remove_firewall) run for `fake.action_seconds`
(tests/fakes/hetzner_actions.py); meanwhile other changes to the firewall get 409 `conflict`.

Errors:
- 404 `not_found`: no such firewall.
- 422 `invalid_input` (with `details.fields`): bad name, labels, rules (direction, protocol,
  a port for tcp/udp only and required there, 1-65535 or a range "a-b", source_ips only and
  required for `in`, destination_ips for `out`, at most 100 CIDRs with empty host bits,
  description <= 255 chars, at most 50 rules), a bad apply_to/remove_from entry or selector.
- 409 `uniqueness_error`: the name is taken.
- `firewall_resource_not_found`: a server to apply to or remove from does not exist (422 on
  create, 404 on the actions: the reference says so per operation).
- 422 `server_already_added`: one server twice in a create's apply_to.
- 422 `firewall_already_applied`: that server or selector already has it.
- 422 `firewall_managed_by_label_selector`: removing a server that only a selector reaches.
- 422 `firewall_already_removed`: removing what it is not applied to (hcloud-go's code; the
  reference does not list one).
- 422 `resource_in_use`: delete while `applied_to` is not empty.
"""

from __future__ import annotations

import ipaddress
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
    _parse_selector,
)
from tests.fakes.hetzner_actions import busy, start_action
from tests.fakes.hetzner_volumes import bad_labels

FIREWALL_ENDPOINTS = frozenset(
    {
        "GET /firewalls",
        "POST /firewalls",
        "GET /firewalls/{id}",
        "PUT /firewalls/{id}",
        "DELETE /firewalls/{id}",
        "POST /firewalls/{id}/actions/set_rules",
        "POST /firewalls/{id}/actions/apply_to_resources",
        "POST /firewalls/{id}/actions/remove_from_resources",
    }
)
MAX_RULES, MAX_CIDRS = 50, 100
_PROTOCOLS = ("tcp", "udp", "icmp", "esp", "gre")
_PORT = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")


def register(app: web.Application, fake: HetznerFake) -> None:
    routes = _FirewallRoutes(fake)
    app.router.add_get("/v1/firewalls", routes.list_all)
    app.router.add_post("/v1/firewalls", routes.create)
    app.router.add_get("/v1/firewalls/{id}", routes.get)
    app.router.add_put("/v1/firewalls/{id}", routes.update)
    app.router.add_delete("/v1/firewalls/{id}", routes.delete)
    app.router.add_post("/v1/firewalls/{id}/actions/set_rules", routes.set_rules)
    app.router.add_post("/v1/firewalls/{id}/actions/apply_to_resources", routes.apply)
    app.router.add_post("/v1/firewalls/{id}/actions/remove_from_resources", routes.remove)
    app.middlewares.append(routes.sync)


def rule_problem(rule: Any) -> str | None:
    """Why the API refuses this rule, or None. Pure, so tests can table it."""
    if not isinstance(rule, dict):
        return "rule must be an object"
    direction, protocol, port = rule.get("direction"), rule.get("protocol"), rule.get("port")
    if direction not in ("in", "out"):
        return "direction must be in or out"
    if protocol not in _PROTOCOLS:
        return f"protocol must be one of {', '.join(_PROTOCOLS)}"
    if protocol in ("tcp", "udp"):
        if port is None:
            return "port is required for tcp and udp"
        if not _port_ok(port):
            return "port must be 1-65535 or a range like 1024-5000"
    elif port is not None:
        return "port is only allowed for tcp and udp"
    wanted, unwanted = (
        ("source_ips", "destination_ips")
        if direction == "in"
        else ("destination_ips", "source_ips")
    )
    if rule.get(unwanted):
        return f"{unwanted} is not allowed for direction {direction}"
    ips = rule.get(wanted)
    if not isinstance(ips, list) or not ips:
        return f"{wanted} is required for direction {direction}"
    if len(ips) > MAX_CIDRS:
        return f"at most {MAX_CIDRS} CIDRs"
    for ip in ips:
        try:
            if "/" not in ip:  # the reference wants CIDR notation, even for one host
                raise ValueError(ip)
            ipaddress.ip_network(ip, strict=True)
        except (TypeError, ValueError):
            return f"{ip!r} is not a CIDR block with empty host bits"
    description = rule.get("description")
    if description is not None and (not isinstance(description, str) or len(description) > 255):
        return "description must be a string of at most 255 characters"
    return None


def normalized(rule: Json) -> Json:
    """The rule as the API shows it: every key present, CIDRs canonical (RFC 5952 for IPv6)."""

    def canonical(ips: Any) -> list[str]:
        return [str(ipaddress.ip_network(ip)) for ip in ips or []]

    return {
        "description": rule.get("description"),
        "direction": rule["direction"],
        "source_ips": canonical(rule.get("source_ips")),
        "destination_ips": canonical(rule.get("destination_ips")),
        "protocol": rule["protocol"],
        "port": rule.get("port"),
    }


def _port_ok(port: Any) -> bool:
    match = _PORT.match(port) if isinstance(port, str) else None
    if match is None:
        return False
    low, high = int(match[1]), int(match[2] or match[1])
    return 1 <= low <= high <= 65535


_firewall_route = _found("firewall", lambda fake: fake.firewalls)


class _FirewallRoutes:
    def __init__(self, fake: HetznerFake) -> None:
        self.fake = fake

    @web.middleware
    async def sync(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Around every request: selectors re-resolved, servers' `public_net.firewalls` rebuilt
        (before: servers may have changed; after: so the fake's state is current for tests)."""
        self.resolve()
        response: web.StreamResponse = await handler(request)
        self.resolve()
        return response

    def resolve(self) -> None:
        reaching: dict[int, list[int]] = {server_id: [] for server_id in self.fake.servers}
        for firewall in self.fake.firewalls.values():
            for entry in firewall["applied_to"]:
                if entry["type"] == "label_selector":
                    match = _parse_selector(entry["label_selector"]["selector"])
                    ids = [i for i, s in sorted(self.fake.servers.items()) if match(s["labels"])]
                    entry["applied_to_resources"] = [
                        {"type": "server", "server": {"id": i}} for i in ids
                    ]
                else:
                    ids = [entry["server"]["id"]]
                for server_id in ids:
                    if server_id in reaching and firewall["id"] not in reaching[server_id]:
                        reaching[server_id].append(firewall["id"])
        for server_id, firewall_ids in reaching.items():
            self.fake.servers[server_id]["public_net"]["firewalls"] = [
                {"id": i, "status": "applied"} for i in sorted(firewall_ids)
            ]

    async def list_all(self, request: web.Request) -> web.StreamResponse:
        return _filtered_page(request, "firewalls", self.fake.firewalls.values())

    @_firewall_route
    async def get(self, request: web.Request, firewall: Json) -> web.StreamResponse:
        return web.json_response({"firewall": firewall})

    async def create(self, request: web.Request) -> web.StreamResponse:
        body = request[_BODY]
        if not isinstance(body, dict):
            return _error(400, "json_error", "invalid JSON in request body")
        problem = self._check_meta(body, None, name_required=True) or _rules_problem(
            body.get("rules", [])
        )
        if problem is not None:
            return problem
        apply_to = body.get("apply_to", [])
        problem = self._targets_problem(apply_to, None, missing_status=422)
        if problem is not None:
            return problem
        firewall_id = next(self.fake._ids)
        firewall: Json = {
            "id": firewall_id,
            "name": body["name"],
            "labels": dict(body.get("labels") or {}),
            "created": _now_iso(),
            "rules": [normalized(rule) for rule in body.get("rules", [])],
            "applied_to": [],
        }
        self.fake.firewalls[firewall_id] = firewall
        actions = [self._apply(firewall, entry) for entry in apply_to]
        return web.json_response({"firewall": firewall, "actions": actions}, status=201)

    @_firewall_route
    async def update(self, request: web.Request, firewall: Json) -> web.StreamResponse:
        body = request[_BODY]
        if not isinstance(body, dict):
            return _error(400, "json_error", "invalid JSON in request body")
        problem = self._check_meta(body, firewall, name_required=False) or self._conflict(firewall)
        if problem is not None:
            return problem
        firewall["name"] = body.get("name", firewall["name"])
        firewall["labels"] = dict(body["labels"] if "labels" in body else firewall["labels"])
        return web.json_response({"firewall": firewall})

    @_firewall_route
    async def delete(self, request: web.Request, firewall: Json) -> web.StreamResponse:
        problem = self._conflict(firewall)
        if problem is not None:
            return problem
        if firewall["applied_to"]:
            return _error(422, "resource_in_use", "firewall is still applied to a resource")
        del self.fake.firewalls[firewall["id"]]
        return web.Response(status=204)

    @_firewall_route
    async def set_rules(self, request: web.Request, firewall: Json) -> web.StreamResponse:
        body = request[_BODY]
        rules = body.get("rules") if isinstance(body, dict) else None
        problem = _rules_problem(rules) or self._conflict(firewall)
        if problem is not None:
            return problem
        assert isinstance(rules, list)  # _rules_problem checked it
        firewall["rules"] = [normalized(rule) for rule in rules]
        actions = [start_action(self.fake, "set_firewall_rules", [("firewall", firewall["id"])])]
        actions += [
            start_action(self.fake, "apply_firewall", [("firewall", firewall["id"]), ("server", i)])
            for i in self._reached(firewall)
        ]
        return web.json_response({"actions": actions}, status=201)

    @_firewall_route
    async def apply(self, request: web.Request, firewall: Json) -> web.StreamResponse:
        body = request[_BODY]
        apply_to = body.get("apply_to") if isinstance(body, dict) else None
        problem = self._targets_problem(apply_to, firewall, missing_status=404)
        if problem is not None:
            return problem
        assert isinstance(apply_to, list)  # _targets_problem checked it
        actions = [self._apply(firewall, entry) for entry in apply_to]
        return web.json_response({"actions": actions}, status=201)

    @_firewall_route
    async def remove(self, request: web.Request, firewall: Json) -> web.StreamResponse:
        body = request[_BODY]
        remove_from = body.get("remove_from") if isinstance(body, dict) else None
        if not isinstance(remove_from, list) or any(_target_key(e) is None for e in remove_from):
            return _invalid("remove_from", "entries need a type and a server or label_selector")
        problem = self._conflict(firewall)
        if problem is not None:
            return problem
        present = [_target_key(entry) for entry in firewall["applied_to"]]
        for entry in remove_from:
            key = _target_key(entry)
            if key is not None and key[0] == "server" and key[1] not in self.fake.servers:
                return _error(404, "firewall_resource_not_found", "server not found")
            if key in present:
                continue
            if key is not None and key[0] == "server" and key[1] in self._reached(firewall):
                return _error(
                    422,
                    "firewall_managed_by_label_selector",
                    "firewall is applied via a label selector and cannot be removed manually",
                )
            return _error(422, "firewall_already_removed", "firewall is not applied there")
        actions = []
        for entry in remove_from:
            key = _target_key(entry)
            firewall["applied_to"] = [e for e in firewall["applied_to"] if _target_key(e) != key]
            actions.append(start_action(self.fake, "remove_firewall", self._touched(firewall, key)))
        return web.json_response({"actions": actions}, status=201)

    # -- helpers ------------------------------------------------------------------------

    def _check_meta(self, body: Json, firewall: Json | None, *, name_required: bool) -> Any:
        if name_required or "name" in body:
            name = body.get("name")
            if not isinstance(name, str) or not name or len(name) > 128:
                return _invalid("name", "is invalid")
            if any(f["name"] == name and f is not firewall for f in self.fake.firewalls.values()):
                return _error(
                    409, "uniqueness_error", "firewall name is already used", _field("name")
                )
        if "labels" in body and bad_labels(body["labels"]):
            return _invalid("labels", "invalid label")
        return None

    def _targets_problem(
        self, apply_to: Any, firewall: Json | None, *, missing_status: int
    ) -> web.Response | None:
        if not isinstance(apply_to, list) or any(_target_key(e) is None for e in apply_to):
            return _invalid("apply_to", "entries need a type and a server or label_selector")
        keys = [_target_key(entry) for entry in apply_to]
        for key in keys:
            assert key is not None
            if key[0] == "label_selector":
                try:
                    _parse_selector(str(key[1]))
                except ValueError as exc:
                    return _invalid("apply_to", f"invalid label_selector: {exc}")
            elif key[1] not in self.fake.servers:
                return _error(missing_status, "firewall_resource_not_found", "server not found")
        servers = [key for key in keys if key is not None and key[0] == "server"]
        if len(servers) != len(set(servers)):
            return _error(422, "server_already_added", "server was applied more than once")
        if firewall is None:
            return None
        present = [_target_key(entry) for entry in firewall["applied_to"]]
        if any(key in present for key in keys):
            return _error(422, "firewall_already_applied", "firewall is already applied")
        return self._conflict(firewall)

    def _apply(self, firewall: Json, entry: Json) -> Json:
        key = _target_key(entry)
        assert key is not None
        if key[0] == "server":
            firewall["applied_to"].append({"type": "server", "server": {"id": key[1]}})
        else:
            firewall["applied_to"].append(
                {
                    "type": "label_selector",
                    "label_selector": {"selector": key[1]},
                    "applied_to_resources": [],  # resolved before the next request
                }
            )
        return start_action(self.fake, "apply_firewall", self._touched(firewall, key))

    def _touched(self, firewall: Json, key: tuple[str, Any] | None) -> list[tuple[str, int]]:
        touched = [("firewall", int(firewall["id"]))]
        if key is not None and key[0] == "server":
            touched.append(("server", int(key[1])))
        return touched

    def _reached(self, firewall: Json) -> list[int]:
        """Servers the firewall reaches now, directly or through a selector."""
        reached: set[int] = set()
        for entry in firewall["applied_to"]:
            if entry["type"] == "server":
                reached.add(entry["server"]["id"])
            else:
                match = _parse_selector(entry["label_selector"]["selector"])
                reached |= {i for i, s in self.fake.servers.items() if match(s["labels"])}
        return sorted(reached)

    def _conflict(self, firewall: Json) -> web.Response | None:
        if busy(self.fake, "firewall", firewall["id"]):
            return _error(409, "conflict", "firewall has a running action, please retry")
        return None


def _rules_problem(rules: Any) -> web.Response | None:
    if not isinstance(rules, list):
        return _invalid("rules", "must be a list")
    if len(rules) > MAX_RULES:
        return _invalid("rules", f"at most {MAX_RULES} rules")
    for rule in rules:
        problem = rule_problem(rule)
        if problem is not None:
            return _invalid("rules", problem)
    return None


def _target_key(entry: Any) -> tuple[str, Any] | None:
    """("server", id) or ("label_selector", selector) for a well-formed entry, else None."""
    if not isinstance(entry, dict):
        return None
    if entry.get("type") == "server" and isinstance(entry.get("server"), dict):
        server_id = entry["server"].get("id")
        return ("server", server_id) if isinstance(server_id, int) else None
    if entry.get("type") == "label_selector" and isinstance(entry.get("label_selector"), dict):
        selector = entry["label_selector"].get("selector")
        return ("label_selector", selector) if isinstance(selector, str) and selector else None
    return None
