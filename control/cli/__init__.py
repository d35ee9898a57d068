"""`clawfleet`: the operators' command line for the control plane's admin API.

Owns: no table and no state; the command line's grammar (parser), its configuration
from flags and the environment (config), the HTTP client and exit codes (client), the
commands by group (commands), the output (render) and simulate-payment (payment).
May import: any control module, but only through the admin API at run time: the
commands never touch the database; control.users.plans and control.billing.rules
are used for their pure functions (plans, subdomains).

Contract:
- `main(argv) -> int` never raises for expected failures and returns the exit code:
  0 ok, 1 the API answered with an error (its `error.code` and message are printed),
  2 usage or configuration error, 3 the control plane cannot be reached (refused,
  DNS, timeout, dropped connection), 4 the control plane refused the admin token (401).
  Diagnostics go to stderr as one line starting with `clawfleet: `; the admin token
  is never printed.
- Where: `--url`, else `CLAWFLEET_URL`, else http://127.0.0.1:8080. Credentials:
  `--token-file`, else `ADMIN_TOKEN`, else `./data/admin_token` (written by `make run`).
  Every request is bounded by `CLAWFLEET_TIMEOUT` seconds (default 10). Requests go
  straight to the URL: no HTTP(S)_PROXY, and redirects are not followed (so the
  bearer token is never re-sent to another address).
- Output: aligned tables for people; `--json` prints the API's JSON unchanged.
- `simulate-payment` needs no admin token: it signs a `checkout.session.completed`
  and a `customer.subscription.created` event with `STRIPE_WEBHOOK_SECRET` exactly as
  Stripe does and POSTs them to `<url>/v1/stripe/webhook`, in that order.

Blocking stdlib `urllib` on purpose: one request at a time needs no event loop, and
callers that have one (tests) run `main` in a thread. `python -m control.cli` runs it too.
"""

from __future__ import annotations

import os
import sys

from control.cli import config
from control.cli.client import (
    EXIT_API,
    EXIT_AUTH,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Api,
    CliError,
)
from control.cli.commands import run
from control.cli.parser import build_parser

# tests/test_names.py checks the plan-name rule with the other name rules.
from control.cli.payment import _PLAN_NAME as _PLAN_NAME

__all__ = [
    "EXIT_API",
    "EXIT_AUTH",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "CliError",
    "build_parser",
    "main",
]


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        url = config.base_url(args)
        # The token is read only when a command needs it: simulate-payment does not.
        api = Api(url, config.timeout(), lambda: config.admin_token(args))
        return run(args, api)
    except CliError as exc:
        print(f"clawfleet: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # `clawfleet events | head`: the reader left; that is not an error.
        # Point stdout at /dev/null so the interpreter's final flush fails quietly too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
