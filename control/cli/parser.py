"""`clawfleet`'s command line grammar: the commands, their arguments and the help text.

Contract: `build_parser()` returns a parser whose usage errors raise `CliError` with
EXIT_USAGE (after printing the usage line) instead of exiting; `--json`, `--url` and
`--token-file` work before or after the command. The help's epilog lists the
environment variables and the exit codes.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from typing import Any

from control.cli.client import EXIT_USAGE, CliError
from control.cli.config import DEFAULT_TIMEOUT, DEFAULT_TOKEN_FILE, DEFAULT_URL

EPILOG = f"""\
environment:
  CLAWFLEET_URL          control plane URL (default {DEFAULT_URL}); --url overrides it
  ADMIN_TOKEN            admin bearer token; --token-file overrides it; when neither is
                         given, ./{DEFAULT_TOKEN_FILE} is read (`make run` writes it there)
  CLAWFLEET_TIMEOUT      seconds per request (default {DEFAULT_TIMEOUT:g})
  STRIPE_WEBHOOK_SECRET  simulate-payment: the webhook signing secret (whsec_...);
                         default ./data/stripe_webhook_secret (written by `make run`)
  PLANS                  simulate-payment: the control plane's plans JSON, for price ids

exit codes:
  0  ok
  1  the API answered with an error (its error code and message are printed)
  2  usage or configuration error
  3  cannot reach the control plane
  4  the control plane refused the admin token (401)
"""

Add = Callable[[str, str], argparse.ArgumentParser]


def _nonempty(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def _positive(value: str) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", value) or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own usage errors: exit 2
        self.print_usage(sys.stderr)
        raise CliError(EXIT_USAGE, message)


def _common() -> _Parser:
    # The common options work before or after the command; SUPPRESS keeps a
    # subcommand's unset option from overwriting one given before it.
    common = _Parser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the API's JSON"
    )
    common.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help=f"control plane URL (CLAWFLEET_URL, default {DEFAULT_URL})",
    )
    common.add_argument(
        "--token-file",
        default=argparse.SUPPRESS,
        help=f"file holding the admin token (else ADMIN_TOKEN, else ./{DEFAULT_TOKEN_FILE})",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = _Parser(
        prog="clawfleet",
        description="Operate a Clawfleet control plane through its admin API.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            parents=[common],
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    _server_commands(add)
    _user_commands(add)
    _other_commands(add)
    return parser


def _server_commands(add: Add) -> None:
    servers = add("servers", "list servers: status, heartbeat age, capacity used/total")
    servers.add_argument("--status", help="only these statuses, comma-separated (e.g. active)")
    add("server", "one server and its containers").add_argument("server", type=_nonempty)
    for action, text in (
        ("cordon", "stop placing users on a server"),
        ("uncordon", "allow placing users on a server again"),
        ("drain", "cordon a server; the autoscaler moves its users elsewhere"),
    ):
        add(action, text).add_argument("server", type=_nonempty)


def _user_commands(add: Add) -> None:
    users = add("users", "list users: state, server, billing, container")
    users.add_argument("--state", help="only these states, comma-separated (e.g. pending)")
    users.add_argument("--server", metavar="SERVER", help="only the users placed on SERVER")
    add("user", "one user").add_argument("user", type=_nonempty)
    add("suspend", "stop a user's container (data kept)").add_argument("user", type=_nonempty)
    add("resume", "start a suspended user again").add_argument("user", type=_nonempty)
    move = add("move", "move a running user to another server (make-before-break)")
    move.add_argument("user", type=_nonempty)
    move.add_argument(
        "--to", metavar="SERVER", type=_nonempty, help="target server (default: best fit)"
    )
    move.add_argument(
        "--location",
        type=_nonempty,
        help="another location than the user's volume: through a backup and a restore",
    )
    add("restart", "replace a user's container on its server; its state is kept").add_argument(
        "user", type=_nonempty
    )
    add("rotate-token", "give a user a new gateway token; prints URL and token").add_argument(
        "user", type=_nonempty
    )
    add("access", "print a user's agent URL and gateway token").add_argument("user", type=_nonempty)
    add("login-link", "print a one-time sign-in URL for a user's agent (5 minutes)").add_argument(
        "user", type=_nonempty
    )
    secrets = add("secrets", "a user's secrets: list names, set NAME (value on stdin), unset NAME")
    secrets.add_argument("user", type=_nonempty)
    secrets.add_argument("action", choices=("list", "set", "unset"))
    secrets.add_argument("name", nargs="?", type=_nonempty, help="for set and unset")
    add("backups", "a user's snapshots and recent backup jobs").add_argument("user", type=_nonempty)
    add("backup", "ask for a snapshot of a user's volume now").add_argument("user", type=_nonempty)
    restore = add("restore", "restore a user's volume to a snapshot (its container is stopped)")
    restore.add_argument("user", type=_nonempty)
    restore.add_argument("snapshot", type=_nonempty, help="a snapshot id from `backups USER`")
    recover = add("recover", "a user whose volume is lost: restore a snapshot onto a new volume")
    recover.add_argument("user", type=_nonempty)
    recover.add_argument("snapshot", type=_nonempty, help="a snapshot id from `backups USER`")
    empty = add(
        "recover-empty",
        "a user whose volume is lost and who has no snapshot: start it on an EMPTY new "
        "volume (its state is lost)",
    )
    empty.add_argument("user", type=_nonempty)
    empty.add_argument(
        "--accept-data-loss",
        metavar="USER",
        required=True,
        help="the user id again: you accept that its state is lost",
    )
    empty.add_argument("--reason", type=_nonempty, required=True, help="why (in the event)")


def _other_commands(add: Add) -> None:
    events = add("events", "the decision log, newest first")
    events.add_argument(
        "--limit", type=_positive, default=50, help="rows (default 50, at most 1000)"
    )
    events.add_argument(
        "--before", type=_positive, metavar="ID", help="only events older than this id"
    )
    join = add("join-token", "a one-time token that lets one server join (printed alone on stdout)")
    join.add_argument(
        "--ttl",
        type=_positive,
        metavar="SECONDS",
        help="validity, 60..604800 (default BOOTSTRAP_TOKEN_TTL)",
    )
    # What the server has: its agent is never trusted for more (docs/capacity.md).
    for flag, what in (
        ("--cpus", "CPUs"),
        ("--memory-mb", "memory in MB"),
        ("--disk-gb", "disk in GB"),
    ):
        join.add_argument(flag, type=_positive, help=f"the server's {what} (recommended)")
    pay = add(
        "simulate-payment",
        "send a signed test checkout + active subscription for USER_ID to the Stripe webhook "
        "(needs STRIPE_WEBHOOK_SECRET, not the admin token)",
    )
    pay.add_argument("user_id", type=_nonempty)
    pay.add_argument("--plan", default="default", help="plan bought (default: default)")
