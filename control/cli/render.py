"""What `clawfleet` prints: aligned tables and key/value blocks for people, the API's
JSON unchanged for `--json`.

Contract: every `render_*` takes the API's JSON body and returns text without a
trailing newline; a missing value prints as `-`, booleans as yes/no, floats without
trailing zeros. `show` prints either the JSON (with `--json`) or the rendering.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from control.cli.client import EXIT_OK


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Columns padded to their widest cell, two spaces apart."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    lines = [list(headers), *cells]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _pairs(pairs: Sequence[tuple[str, object]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k.ljust(width)}  {_cell(v)}" for k, v in pairs)


def _used_total(pair: dict[str, Any] | None) -> str:
    pair = pair or {}
    return f"{_cell(pair.get('used'))}/{_cell(pair.get('total'))}"


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"


def _flags(server: dict[str, Any]) -> str:
    flags = [name for name in ("cordoned", "draining", "overclaim") if server.get(name)]
    flags += ["kept"] if server.get("kept_because") else []
    return ",".join(flags) or "-"


SERVER_HEADERS = (
    "ID", "NAME", "STATUS", "FLAGS", "IP", "HEARTBEAT", "MEM MB", "CPUS", "USERS", "RUNNING", "VERSION",
)  # fmt: skip


def server_row(s: dict[str, Any]) -> list[object]:
    capacity = s.get("capacity") or {}
    return [
        s["id"],
        s.get("name"),
        s.get("status"),
        _flags(s),
        s.get("public_ip"),
        _age(s.get("last_heartbeat_age")),
        _used_total(capacity.get("memory_mb")),
        _used_total(capacity.get("cpus")),
        capacity.get("users"),
        f"{s.get('containers_running', 0)}/{s.get('containers_desired', 0)}",
        s.get("agent_version"),
    ]


def listing(
    body: dict[str, Any], key: str, headers: Sequence[str], row: Callable[[Any], list[object]]
) -> str:
    """`body[key]` as a table of one row each, or `no <key>` when it is empty."""
    items = body[key]
    return table(headers, [row(item) for item in items]) if items else f"no {key}"


def render_servers(body: dict[str, Any]) -> str:
    listed = listing(body, "servers", SERVER_HEADERS, server_row)
    # An API older than volume prices sends no `volume_cost`: no cost line then.
    return listed + "\n\n" + cost_line(body) if "volume_cost" in body else listed


MONTH_HOURS = 730  # as the dashboard: hourly x 730, ignoring Hetzner's monthly cap


def cost_line(body: dict[str, Any]) -> str:
    """The servers' and the volumes' list prices side by side (net, provider currency)."""
    live = [s for s in body["servers"] if s.get("status") != "deleted"]
    prices = [s["hourly_price"] for s in live if isinstance(s.get("hourly_price"), int | float)]
    hourly = sum(prices)
    servers = (
        f"servers {hourly:.4f}/h ≈ {hourly * MONTH_HOURS:.2f}/month" if prices else "servers -"
    )
    if len(prices) < len(live):
        servers += f" ({len(live) - len(prices)} without a price)"
    cost = body["volume_cost"] or {}
    count, monthly = cost.get("count") or 0, cost.get("monthly_price")
    volumes = "-" if monthly is None else f"{monthly:.2f}/month"
    if count:
        volumes += f" ({count} volume{'s' if count != 1 else ''}, {cost.get('size_gb')} GB)"
    currency = cost.get("currency") or "provider currency"
    return f"cost (net, {currency}): {servers}; volumes {volumes}"


def _firewall(firewall: dict[str, Any] | None) -> str | None:
    """`protected`, or the state in capitals (UNPROTECTED for a server joined by hand)
    with why: an operator must not miss a worker that takes traffic from anyone."""
    if not firewall:
        return None
    if firewall.get("protected"):
        return "protected"
    return f"{str(firewall.get('state')).upper()}: {firewall.get('detail')}"


def render_server(s: dict[str, Any]) -> str:
    capacity = s.get("capacity") or {}
    head = _pairs(
        [
            ("id", s["id"]),
            ("name", s.get("name")),
            ("status", s.get("status")),
            ("cordoned", s.get("cordoned")),
            ("draining", s.get("draining")),
            ("over-claim", s.get("overclaim")),
            ("kept because", s.get("kept_because")),
            ("capacity from", s.get("capacity_source")),
            ("origin", s.get("origin")),
            ("firewall", _firewall(s.get("firewall"))),
            ("provider", f"{_cell(s.get('provider'))} {_cell(s.get('provider_id'))}"),
            ("type / location", f"{_cell(s.get('server_type'))} / {_cell(s.get('location'))}"),
            ("public ip", s.get("public_ip")),
            ("hostname", s.get("hostname")),
            (
                "agent / docker",
                f"{_cell(s.get('agent_version'))} / {_cell(s.get('docker_version'))}",
            ),
            ("heartbeat age", _age(s.get("last_heartbeat_age"))),
            ("heartbeat interval", s.get("heartbeat_interval")),
            (
                "generation",
                f"{_cell(s.get('applied_generation'))}/{_cell(s.get('generation'))} applied",
            ),
            ("memory mb", _used_total(capacity.get("memory_mb"))),
            ("cpus", _used_total(capacity.get("cpus"))),
            ("users", capacity.get("users")),
            (
                "containers",
                f"{s.get('containers_running', 0)}/{s.get('containers_desired', 0)} running",
            ),
            ("hourly price", s.get("hourly_price")),
            ("registered", s.get("registered_at")),
            ("created", s.get("created_at")),
        ]
    )
    containers = s.get("containers") or []
    if not containers:
        return head + "\n\nno containers"
    rows = [
        [
            c["user_id"],
            c.get("desired"),
            c.get("state"),
            c.get("health"),
            c.get("restart_count"),
            c.get("error"),
        ]
        for c in containers
    ]
    return head + "\n\n" + table(("USER", "DESIRED", "STATE", "HEALTH", "RESTARTS", "ERROR"), rows)


USER_HEADERS = (
    "USER",
    "SUBDOMAIN",
    "PLAN",
    "STATE",
    "HOLD",
    "SERVER",
    "BILLING",
    "CONTAINER",
    "ERROR",
)


def user_row(u: dict[str, Any]) -> list[object]:
    container = u.get("container") or {}
    return [
        u["user_id"],
        u.get("subdomain"),
        u.get("plan"),
        u.get("state"),
        u.get("hold") or "-",
        u.get("server_id"),
        u.get("billing_status"),
        container.get("state"),
        u.get("error"),
    ]


def render_users(body: dict[str, Any]) -> str:
    return listing(body, "users", USER_HEADERS, user_row)


def move_line(move: dict[str, Any] | None) -> str | None:
    """A move to another location (control/volumes/relocation.py), on one line."""
    if not move:
        return None
    source = move.get("from") or "lost volume"  # a recovery has no source server
    line = f"{move.get('phase')}: {source} -> {move.get('to')} in {move.get('location')}"
    return line + (f" ({move['error']})" if move.get("error") else "")


def render_user(u: dict[str, Any]) -> str:
    container = u.get("container") or {}
    return _pairs(
        [
            ("user", u["user_id"]),
            ("subdomain", u.get("subdomain")),
            ("plan", u.get("plan")),
            ("state", u.get("state")),
            ("server", u.get("server_id")),
            ("moving from", u.get("moving_from")),
            ("move", move_line(u.get("move"))),
            ("data on", u.get("data_server_id")),
            ("billing", u.get("billing_status")),
            # Billing says whether it may run; an operator's hold whether it will.
            ("billing says", u.get("billing_state")),
            ("operator hold", u.get("hold") or "none"),
            ("billing conflict", u.get("billing_conflict")),
            ("stripe customer", u.get("stripe_customer_id")),
            ("stripe subscription", u.get("stripe_subscription_id")),
            ("container", container.get("state")),
            ("health", container.get("health")),
            ("restarts", container.get("restart_count")),
            ("container error", container.get("error")),
            # Its worker's agent cannot run what the spec needs (docs/production.md).
            ("spec withheld", u.get("spec_withheld")),
            ("error", u.get("error")),
            ("purge after", u.get("purge_after")),
            ("created", u.get("created_at")),
            ("updated", u.get("updated_at")),
        ]
    )


def event_row(e: dict[str, Any]) -> list[object]:
    return [
        e["id"],
        e.get("at"),
        e.get("kind"),
        e.get("server_id"),
        e.get("user_id"),
        e.get("message"),
    ]


def render_events(body: dict[str, Any]) -> str:
    return listing(body, "events", ("ID", "AT", "KIND", "SERVER", "USER", "MESSAGE"), event_row)


def render_access(body: dict[str, Any]) -> str:
    return _pairs([("url", body.get("url")), ("token", body.get("token"))])


def wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def print_json(body: Any) -> None:
    print(json.dumps(body, indent=2))


def show(args: argparse.Namespace, body: Any, render: Callable[[Any], str]) -> int:
    if wants_json(args):
        print_json(body)
    else:
        print(render(body))
    return EXIT_OK
