"""What each `clawfleet` command asks the admin API and prints, by command group:
servers (servers, server, cordon, uncordon, drain), users (users, user, suspend, resume,
move, access, rotate-token), backups (control/cli/backups.py), the event log, join
tokens and simulate-payment.

Contract: `run(args, api)` makes the command's requests, prints the result (JSON with
`--json`) and returns EXIT_OK; `servers` and `users` follow the listing's cursors to
its end and print it whole (`--json`: the API's body, with every page's rows); failures raise `CliError`. Path segments from the command
line are percent-encoded, so an id can never name another route.
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from typing import Any

from control.cli.backups import BACKUP_COMMANDS, run_backups
from control.cli.client import EXIT_OK, EXIT_USAGE, Api, CliError
from control.cli.payment import simulate_payment
from control.cli.render import (
    SERVER_HEADERS,
    USER_HEADERS,
    print_json,
    render_access,
    render_events,
    render_server,
    render_servers,
    render_user,
    render_users,
    server_row,
    show,
    table,
    user_row,
    wants_json,
)

PAGE_LIMIT = 500  # the most rows a page of the admin API holds
SERVER_COMMANDS = frozenset({"servers", "server", "cordon", "uncordon", "drain"})
USER_COMMANDS = frozenset(
    {
        "users",
        "user",
        "suspend",
        "resume",
        "restart",
        "move",
        "access",
        "rotate-token",
        "login-link",
    }
)


def _seg(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def run(args: argparse.Namespace, api: Api) -> int:
    cmd = args.command
    if cmd in SERVER_COMMANDS:
        return _servers(cmd, args, api)
    if cmd in USER_COMMANDS:
        return _users(cmd, args, api)
    if cmd == "secrets":
        return _secrets(args, api)
    if cmd in BACKUP_COMMANDS:
        return run_backups(cmd, args, api)
    if cmd == "events":
        return _events(args, api)
    if cmd == "join-token":
        return _join_token(args, api)
    if cmd == "simulate-payment":
        return simulate_payment(api, args)
    raise CliError(EXIT_USAGE, f"unknown command {cmd}")  # argparse already refuses these


def _servers(cmd: str, args: argparse.Namespace, api: Api) -> int:
    if cmd == "servers":
        listing = every_page(api, "/v1/servers", "servers", {"status": args.status})
        return show(args, listing, render_servers)
    if cmd == "server":
        return show(args, api.call("GET", f"/v1/servers/{_seg(args.server)}"), render_server)
    body = api.call("POST", f"/v1/servers/{_seg(args.server)}/{cmd}")  # cordon, uncordon, drain
    return show(args, body, lambda s: table(SERVER_HEADERS, [server_row(s)]))


def _users(cmd: str, args: argparse.Namespace, api: Api) -> int:
    if cmd == "users":
        filters = {"state": args.state, "server": args.server}
        return show(args, every_page(api, "/v1/users", "users", filters), render_users)
    user = f"/v1/users/{_seg(args.user)}"
    if cmd == "user":
        return show(args, api.call("GET", user), render_user)
    if cmd == "access":
        return show(args, api.call("GET", f"{user}/access"), render_access)
    if cmd == "rotate-token":
        return show(args, api.call("POST", f"{user}/rotate-token"), render_access)
    if cmd == "login-link":
        link = api.call("POST", f"{user}/signin-link")
        return show(args, link, lambda b: str(b["url"]))
    if cmd == "move":
        where = {"server_id": args.to, "location": args.location}
        body = api.call("POST", f"{user}/move", {k: v for k, v in where.items() if v})
    else:  # suspend, resume, restart
        body = api.call("POST", f"{user}/{cmd}")
    return show(args, body, lambda u: table(USER_HEADERS, [user_row(u)]))


def every_page(api: Api, path: str, key: str, filters: dict[str, str | None]) -> dict[str, Any]:
    """A whole listing: its first page's body with every page's rows, following the
    API's cursors (the largest pages it gives, so 10k servers are 20 requests)."""
    query = {"limit": PAGE_LIMIT, **{k: v for k, v in filters.items() if v}}
    body: dict[str, Any] = api.call("GET", f"{path}?{urllib.parse.urlencode(query)}")
    cursor = body.get("next_cursor")
    while cursor:
        page = api.call("GET", f"{path}?{urllib.parse.urlencode({**query, 'cursor': cursor})}")
        body[key].extend(page[key])
        cursor = page.get("next_cursor")
    if "next_cursor" in body:
        body["next_cursor"] = None  # the whole listing: nothing after it
    return body


def _secrets(args: argparse.Namespace, api: Api) -> int:
    """The value of `set` comes from stdin, never argv (argv shows in `ps` and history)."""
    path = f"/v1/users/{_seg(args.user)}/secrets"
    if args.action != "list" and not args.name:
        raise CliError(EXIT_USAGE, f"secrets {args.action}: NAME is required")
    if args.action == "list":
        body = api.call("GET", path)
    elif args.action == "unset":
        body = api.call("PUT", path, {args.name: None})
    else:
        value = sys.stdin.read()
        value = value[:-1] if value.endswith("\n") else value
        body = api.call("PUT", path, {args.name: value})
    return show(args, body, lambda b: "\n".join(b["names"]) or "(none)")


def _events(args: argparse.Namespace, api: Api) -> int:
    query: dict[str, int] = {"limit": args.limit}
    if args.before is not None:
        query["before"] = args.before
    path = "/v1/events?" + urllib.parse.urlencode(query)
    return show(args, api.call("GET", path), render_events)


def _join_token(args: argparse.Namespace, api: Api) -> int:
    stated = {"ttl_seconds": args.ttl, "cpus": args.cpus}
    stated |= {"memory_mb": args.memory_mb, "disk_gb": args.disk_gb}
    body = api.call("POST", "/v1/join-tokens", {k: v for k, v in stated.items() if v is not None})
    if wants_json(args):
        print_json(body)
    else:
        # The token alone on stdout, so that TOKEN=$(clawfleet join-token) works.
        print(body["token"])
        print(f"expires at {body.get('expires_at')}", file=sys.stderr)
    return EXIT_OK
