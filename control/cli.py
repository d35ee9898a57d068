"""`clawfleet`: the operators' command line for the control plane's admin API.

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
callers that have one (tests) run `main` in a thread.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import IO, Any

from control.users.plans import PlanError, parse_plans

EXIT_OK = 0
EXIT_API = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_AUTH = 4

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TOKEN_FILE = Path("data/admin_token")
DEFAULT_WEBHOOK_SECRET_FILE = Path("data/stripe_webhook_secret")
DEFAULT_TIMEOUT = 10.0
# What tests/stripe_events.py and docs/stripe.md use; the inbox accepts any version.
STRIPE_API_VERSION = "2025-08-27.basil"
_PLAN_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
# Bearer tokens are header values: printable ASCII without spaces.
_TOKEN = re.compile(r"^[\x21-\x7e]+$")

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


class CliError(Exception):
    """A failure with its exit code; the message is printed after `clawfleet: `."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


# --- HTTP -------------------------------------------------------------------------
class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # Following a redirect would hand the bearer token to whatever host it names.
    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


@dataclass(frozen=True)
class Api:
    url: str
    timeout: float
    token_source: Callable[[], str]

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """An admin API call: Bearer auth, JSON in and out."""
        headers = {"Authorization": f"Bearer {self.token_source()}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        return self.send(method, path, data, headers, admin=True)

    def send(
        self, method: str, path: str, data: bytes | None, headers: dict[str, str], *, admin: bool
    ) -> Any:
        # S310: _base_url admits only http and https.
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)  # noqa: S310
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
        location: str | None = None
        try:
            with opener.open(request, timeout=self.timeout) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                status, payload = exc.code, _read_quietly(exc)
                location = exc.headers.get("Location") if exc.headers else None
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from None
        except (OSError, http.client.HTTPException) as exc:
            # Timeouts and dropped connections while reading the answer land here.
            raise self._unreachable(exc) from None
        if admin and status == 401:
            raise CliError(EXIT_AUTH, "the control plane refused ADMIN_TOKEN (401)")
        try:
            parsed = json.loads(payload) if payload else None
        except ValueError:
            parsed = None
        if 300 <= status < 400:
            raise CliError(
                EXIT_API,
                f"redirected (HTTP {status}) to {location or '?'}: not followed, so that the "
                "token stays with CLAWFLEET_URL; point it at the final address",
            )
        if status >= 300:
            code, message = _error_of(parsed, status, payload)
            raise CliError(EXIT_API, f"{code}: {message} (HTTP {status})")
        if parsed is None:
            raise CliError(
                EXIT_API,
                f"bad_response: {self.url}{path} answered HTTP {status} without a JSON body",
            )
        return parsed

    def _unreachable(self, reason: object) -> CliError:
        return CliError(
            EXIT_UNREACHABLE, f"cannot reach the control plane at {self.url}: {_reason(reason)}"
        )


def _read_quietly(exc: urllib.error.HTTPError) -> bytes:
    try:
        return exc.read()
    except (OSError, http.client.HTTPException):
        return b""


def _reason(reason: object) -> str:
    if isinstance(reason, TimeoutError) or str(reason) == "timed out":
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def _error_of(parsed: Any, status: int, payload: bytes) -> tuple[str, str]:
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        error = parsed["error"]
        return str(error.get("code", f"http_{status}")), str(error.get("message", ""))
    # Not the control plane's error shape (a proxy in between, most likely).
    text = payload.decode("utf-8", "replace").strip().splitlines()
    return f"http_{status}", (text[0][:200] if text else "no body")


# --- configuration ----------------------------------------------------------------
def _base_url(args: argparse.Namespace) -> str:
    url = (getattr(args, "url", None) or os.environ.get("CLAWFLEET_URL") or DEFAULT_URL).strip()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CliError(
            EXIT_USAGE, f"the control plane URL must be http(s)://host[:port], got {url!r}"
        )
    return url.rstrip("/")


def _timeout() -> float:
    raw = os.environ.get("CLAWFLEET_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise CliError(EXIT_USAGE, f"CLAWFLEET_TIMEOUT must be seconds in (0, 3600], got {raw!r}")
    return value


def _admin_token(args: argparse.Namespace) -> str:
    token_file = getattr(args, "token_file", None)
    if token_file is not None:
        token, origin = _read_token(Path(token_file)), f"--token-file {token_file}"
    elif os.environ.get("ADMIN_TOKEN", "").strip():
        token, origin = os.environ["ADMIN_TOKEN"].strip(), "ADMIN_TOKEN"
    elif DEFAULT_TOKEN_FILE.is_file():
        token, origin = _read_token(DEFAULT_TOKEN_FILE), f"./{DEFAULT_TOKEN_FILE}"
    else:
        raise CliError(
            EXIT_USAGE,
            f"no admin token: set ADMIN_TOKEN, pass --token-file, or run where `make run` "
            f"wrote ./{DEFAULT_TOKEN_FILE}",
        )
    if not _TOKEN.fullmatch(token):
        # Says where the token came from, never what it is.
        raise CliError(EXIT_USAGE, f"the admin token from {origin} is empty or has spaces")
    return token


def _read_token(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(
            EXIT_USAGE, f"cannot read the admin token from {path}: {_reason(exc)}"
        ) from None


# --- rendering --------------------------------------------------------------------
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


def _server_row(s: dict[str, Any]) -> list[object]:
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


def render_servers(body: dict[str, Any]) -> str:
    servers = body["servers"]
    if not servers:
        return "no servers"
    return table(SERVER_HEADERS, [_server_row(s) for s in servers])


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


def _user_row(u: dict[str, Any]) -> list[object]:
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
    users = body["users"]
    if not users:
        return "no users"
    return table(USER_HEADERS, [_user_row(u) for u in users])


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
            ("error", u.get("error")),
            ("purge after", u.get("purge_after")),
            ("created", u.get("created_at")),
            ("updated", u.get("updated_at")),
        ]
    )


def render_events(body: dict[str, Any]) -> str:
    events = body["events"]
    if not events:
        return "no events"
    rows = [
        [
            e["id"],
            e.get("at"),
            e.get("kind"),
            e.get("server_id"),
            e.get("user_id"),
            e.get("message"),
        ]
        for e in events
    ]
    return table(("ID", "AT", "KIND", "SERVER", "USER", "MESSAGE"), rows)


def render_access(body: dict[str, Any]) -> str:
    return _pairs([("url", body.get("url")), ("token", body.get("token"))])


# --- simulate-payment -------------------------------------------------------------
def stripe_signature(secret: str, payload: bytes, timestamp: int) -> str:
    """The `Stripe-Signature` header value Stripe sends (v1 scheme)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def price_for(plan: str, plans_text: str) -> str:
    """The plan's first Stripe price in PLANS, else a placeholder naming the plan."""
    try:
        plans = parse_plans(plans_text)
    except PlanError as exc:
        raise CliError(EXIT_USAGE, f"PLANS: {exc}") from None
    known = plans.get(plan)
    if known is not None and known.stripe_price_ids:
        return known.stripe_price_ids[0]
    return f"price_clawfleet_{plan}"


def _sim_id(user_id: str) -> str:
    # The same user always gets the same customer and subscription, so simulating
    # again (say with another --plan) updates one subscription instead of adding one.
    return hashlib.sha256(user_id.encode()).hexdigest()[:24]


def simulated_events(user_id: str, plan: str, price_id: str, now: int) -> list[dict[str, Any]]:
    """A completed Checkout Session, then its subscription being created (active)."""
    # Imported here: control.billing.rules pulls in the store (aiosqlite, cryptography), which
    # the admin commands do not need and a machine with only the agent extras lacks.
    from control.billing.rules import derive_subdomain

    subdomain = derive_subdomain(user_id)
    customer, subscription = f"cus_sim_{_sim_id(user_id)}", f"sub_sim_{_sim_id(user_id)}"
    metadata = {"user_id": user_id, "subdomain": subdomain}
    period_end = now + 30 * 86400
    session = {
        "id": f"cs_test_sim_{secrets.token_hex(12)}",
        "object": "checkout.session",
        "amount_subtotal": 2000,
        "amount_total": 2000,
        "cancel_url": "https://example.com/cancel",
        "client_reference_id": user_id,
        "created": now,
        "currency": "usd",
        "customer": customer,
        "customer_details": {"email": f"{subdomain}@example.com", "name": None},
        "expires_at": now + 86400,
        "livemode": False,
        "metadata": metadata,
        "mode": "subscription",
        "payment_status": "paid",
        "status": "complete",
        "subscription": subscription,
        "success_url": "https://example.com/success",
        "url": None,
    }
    sub = {
        "id": subscription,
        "object": "subscription",
        "billing_cycle_anchor": now,
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "collection_method": "charge_automatically",
        "created": now,
        "currency": "usd",
        "customer": customer,
        "ended_at": None,
        "items": {
            "object": "list",
            "data": [
                {
                    "id": f"si_sim_{_sim_id(user_id)}",
                    "object": "subscription_item",
                    "created": now,
                    # Current API versions keep the billing period on the item.
                    "current_period_start": now,
                    "current_period_end": period_end,
                    "metadata": {},
                    "price": {
                        "id": price_id,
                        "object": "price",
                        "active": True,
                        "currency": "usd",
                        "livemode": False,
                        "lookup_key": None,
                        "metadata": {"plan": plan},
                        "nickname": plan,
                        "product": f"prod_sim_{plan}",
                        "recurring": {"interval": "month", "interval_count": 1},
                        "type": "recurring",
                        "unit_amount": 2000,
                    },
                    "quantity": 1,
                    "subscription": subscription,
                }
            ],
            "has_more": False,
            "url": f"/v1/subscription_items?subscription={subscription}",
        },
        "latest_invoice": None,
        "livemode": False,
        "metadata": metadata,
        "start_date": now,
        "status": "active",
    }
    return [
        _event("checkout.session.completed", session, now),
        _event("customer.subscription.created", sub, now),
    ]


def _event(kind: str, obj: dict[str, Any], now: int) -> dict[str, Any]:
    return {
        "id": f"evt_sim_{secrets.token_hex(12)}",
        "object": "event",
        "api_version": STRIPE_API_VERSION,
        "created": now,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": kind,
    }


def simulate_payment(api: Api, args: argparse.Namespace) -> int:
    secret = os.environ.get("STRIPE_WEBHOOK_SECRET", "").strip()
    if not secret and DEFAULT_WEBHOOK_SECRET_FILE.is_file():
        secret = DEFAULT_WEBHOOK_SECRET_FILE.read_text().strip()  # written by `make run`
    if not secret:
        raise CliError(
            EXIT_USAGE,
            "STRIPE_WEBHOOK_SECRET is not set: use the control plane's webhook signing secret",
        )
    if not _PLAN_NAME.fullmatch(args.plan):
        raise CliError(EXIT_USAGE, f"--plan: 1-32 characters a-z 0-9 _ -, got {args.plan!r}")
    price = price_for(args.plan, os.environ.get("PLANS", ""))
    now = int(time.time())
    events = simulated_events(args.user_id, args.plan, price, now)
    deliveries = []
    for event in events:
        # Pretty-printed like Stripe's deliveries; the signature covers these exact bytes.
        payload = json.dumps(event, indent=2).encode()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": stripe_signature(secret, payload, int(time.time())),
            "User-Agent": "clawfleet-simulate-payment (Stripe/1.0 compatible)",
        }
        answer = api.send("POST", "/v1/stripe/webhook", payload, headers, admin=False)
        deliveries.append({"event_id": event["id"], "type": event["type"], "response": answer})
    subscription = events[1]["data"]["object"]
    summary = {
        "user_id": args.user_id,
        "subdomain": subscription["metadata"]["subdomain"],
        "plan": args.plan,
        "price_id": price,
        "customer": subscription["customer"],
        "subscription": subscription["id"],
        "deliveries": deliveries,
    }
    if _wants_json(args):
        _print_json(summary)
        return EXIT_OK
    rows = [
        [d["type"], d["event_id"], "duplicate" if d["response"].get("duplicate") else "received"]
        for d in deliveries
    ]
    print(table(("EVENT", "ID", "RESULT"), rows))
    print(
        f"user {args.user_id} (subdomain {summary['subdomain']}): {summary['customer']}, "
        f"{summary['subscription']} active, price {price}"
    )
    return EXIT_OK


# --- commands ---------------------------------------------------------------------
def _wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def _print_json(body: Any) -> None:
    print(json.dumps(body, indent=2))


def _seg(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _show(args: argparse.Namespace, body: Any, render: Callable[[Any], str]) -> int:
    if _wants_json(args):
        _print_json(body)
    else:
        print(render(body))
    return EXIT_OK


def run(args: argparse.Namespace, api: Api) -> int:
    cmd = args.command
    if cmd == "servers":
        return _show(args, api.call("GET", "/v1/servers"), render_servers)
    if cmd == "server":
        return _show(args, api.call("GET", f"/v1/servers/{_seg(args.server)}"), render_server)
    if cmd in ("cordon", "uncordon", "drain"):
        body = api.call("POST", f"/v1/servers/{_seg(args.server)}/{cmd}")
        return _show(args, body, lambda s: table(SERVER_HEADERS, [_server_row(s)]))
    if cmd == "users":
        return _show(args, api.call("GET", "/v1/users"), render_users)
    if cmd == "user":
        return _show(args, api.call("GET", f"/v1/users/{_seg(args.user)}"), render_user)
    if cmd in ("suspend", "resume"):
        body = api.call("POST", f"/v1/users/{_seg(args.user)}/{cmd}")
        return _show(args, body, lambda u: table(USER_HEADERS, [_user_row(u)]))
    if cmd == "move":
        request = {"server_id": args.to} if args.to else {}
        body = api.call("POST", f"/v1/users/{_seg(args.user)}/move", request)
        return _show(args, body, lambda u: table(USER_HEADERS, [_user_row(u)]))
    if cmd == "access":
        return _show(args, api.call("GET", f"/v1/users/{_seg(args.user)}/access"), render_access)
    if cmd == "rotate-token":
        body = api.call("POST", f"/v1/users/{_seg(args.user)}/rotate-token")
        return _show(args, body, render_access)
    if cmd == "events":
        query: dict[str, int] = {"limit": args.limit}
        if args.before is not None:
            query["before"] = args.before
        path = "/v1/events?" + urllib.parse.urlencode(query)
        return _show(args, api.call("GET", path), render_events)
    if cmd == "join-token":
        stated = {"ttl_seconds": args.ttl, "cpus": args.cpus}
        stated |= {"memory_mb": args.memory_mb, "disk_gb": args.disk_gb}
        body = api.call(
            "POST", "/v1/join-tokens", {k: v for k, v in stated.items() if v is not None}
        )
        if _wants_json(args):
            _print_json(body)
        else:
            # The token alone on stdout, so that TOKEN=$(clawfleet join-token) works.
            print(body["token"])
            print(f"expires at {body.get('expires_at')}", file=sys.stderr)
        return EXIT_OK
    if cmd == "simulate-payment":
        return simulate_payment(api, args)
    raise CliError(EXIT_USAGE, f"unknown command {cmd}")  # argparse already refuses these


# --- argument parsing -------------------------------------------------------------
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


def build_parser() -> argparse.ArgumentParser:
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

    add("servers", "list servers: status, heartbeat age, capacity used/total")
    add("server", "one server and its containers").add_argument("server", type=_nonempty)
    for action, text in (
        ("cordon", "stop placing users on a server"),
        ("uncordon", "allow placing users on a server again"),
        ("drain", "cordon a server; the autoscaler moves its users elsewhere"),
    ):
        add(action, text).add_argument("server", type=_nonempty)
    add("users", "list users: state, server, billing, container")
    add("user", "one user").add_argument("user", type=_nonempty)
    add("suspend", "stop a user's container (data kept)").add_argument("user", type=_nonempty)
    add("resume", "start a suspended user again").add_argument("user", type=_nonempty)
    move = add("move", "move a running user to another server (make-before-break)")
    move.add_argument("user", type=_nonempty)
    move.add_argument(
        "--to", metavar="SERVER", type=_nonempty, help="target server (default: best fit)"
    )
    add("rotate-token", "give a user a new gateway token; prints URL and token").add_argument(
        "user", type=_nonempty
    )
    add("access", "print a user's agent URL and gateway token").add_argument("user", type=_nonempty)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        url = _base_url(args)
        # The token is read only when a command needs it: simulate-payment does not.
        api = Api(url, _timeout(), lambda: _admin_token(args))
        return run(args, api)
    except CliError as exc:
        print(f"clawfleet: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # `clawfleet events | head`: the reader left; that is not an error.
        # Point stdout at /dev/null so the interpreter's final flush fails quietly too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
