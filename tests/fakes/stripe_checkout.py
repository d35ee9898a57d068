"""Checkout Sessions for the fake Stripe API (tests/fakes/stripe_api.py), in Stripe's
wire format: form-encoded requests with bracketed keys (`metadata[user_id]=…`,
`line_items[0][price]=…`), JSON `checkout.session` objects back.

- `POST /v1/checkout/sessions`: needs `mode`, `success_url` and one line item whose
  price is in `prices` (else 400 `resource_missing`, param `line_items[0][price]`);
  `expires_at` 30 minutes to 24 hours ahead (else 400, param `expires_at`), a
  well-formed `customer_email` (else 400 `email_invalid`). An `Idempotency-Key` seen
  before answers the first session again, as Stripe does.
- `GET /v1/checkout/sessions/{id}`: the session (404 `resource_missing`).
- `POST /v1/checkout/sessions/{id}/expire`: an open session becomes `expired`; any
  other is 400 (Stripe refuses to expire a session that is not open).
- `requests[id]`: the parsed form a session was created with.
- `complete(id, customer, subscription)`: what a buyer paying on the hosted page does:
  the session becomes `complete` and is returned as the `checkout.session.completed`
  event's object.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Json = dict[str, Any]
_KEY = re.compile(r"([^\[\]]+)|\[([^\[\]]*)\]")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def parse_form(pairs: list[tuple[str, str]]) -> Json:
    """Stripe's bracketed form keys as nested objects; numeric keys make lists."""
    root: Json = {}
    for key, value in pairs:
        parts = [a or b for a, b in _KEY.findall(key)]
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return _lists(root)


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if node and all(k.isdigit() for k in node):
        return [_lists(node[k]) for k in sorted(node, key=int)]
    return {k: _lists(v) for k, v in node.items()}


def error(
    status: int, message: str, *, code: str | None = None, param: str | None = None
) -> web.Response:
    body: Json = {"type": "invalid_request_error", "message": message}
    if code is not None:
        body["code"] = code
        body["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
    if param is not None:
        body["param"] = param
    return web.json_response({"error": body}, status=status)


@dataclass
class CheckoutSessions:
    prices: set[str] = field(default_factory=set)
    sessions: dict[str, Json] = field(default_factory=dict)
    requests: dict[str, Json] = field(default_factory=dict)  # what each session was asked
    _by_key: dict[str, str] = field(default_factory=dict)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/checkout/sessions", self.create)
        app.router.add_get("/v1/checkout/sessions/{id}", self.retrieve)
        app.router.add_post("/v1/checkout/sessions/{id}/expire", self.expire)

    def complete(self, session_id: str, customer: str, subscription: str) -> Json:
        session = self.sessions[session_id]
        session.update(
            status="complete", payment_status="paid", customer=customer, subscription=subscription
        )
        return dict(session)

    async def create(self, request: web.Request) -> web.Response:
        form = parse_form(list((await request.post()).items()))  # type: ignore[arg-type]
        key = request.headers.get("Idempotency-Key")
        if key and key in self._by_key:
            return web.json_response(self.sessions[self._by_key[key]])
        refused = self._refusal(form)
        if refused is not None:
            return refused
        session = _session(form)
        self.sessions[session["id"]] = session
        self.requests[session["id"]] = form
        if key:
            self._by_key[key] = session["id"]
        return web.json_response(session)

    def _refusal(self, form: Json) -> web.Response | None:
        for name in ("mode", "success_url"):
            if not form.get(name):
                return error(
                    400, f"Missing required param: {name}.", code="parameter_missing", param=name
                )
        items = form.get("line_items") or [{}]
        price = items[0].get("price")
        if price not in self.prices:
            return error(
                400,
                f"No such price: '{price}'",
                code="resource_missing",
                param="line_items[0][price]",
            )
        ahead = int(form.get("expires_at", time.time() + 86400)) - time.time()
        if not 1800 - 5 <= ahead <= 86400 + 5:
            return error(
                400,
                "The `expires_at` timestamp must be between 30 minutes and 24 hours from "
                "Checkout Session creation.",
                param="expires_at",
            )
        email = form.get("customer_email")
        if email is not None and not _EMAIL.fullmatch(email):
            return error(
                400, f"Invalid email address: {email}", code="email_invalid", param="customer_email"
            )
        return None

    async def retrieve(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["id"])
        if session is None:
            return _missing(request.match_info["id"])
        return web.json_response(session)

    async def expire(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["id"])
        if session is None:
            return _missing(request.match_info["id"])
        if session["status"] != "open":
            return error(
                400,
                f'Only Checkout Sessions with a status in ["open"] can be expired. This '
                f'Checkout Session has a status of "{session["status"]}".',
            )
        session.update(status="expired", url=None)
        return web.json_response(session)


def _missing(session_id: str) -> web.Response:
    return error(
        404, f"No such checkout.session: '{session_id}'", code="resource_missing", param="session"
    )


def _session(form: Json) -> Json:
    session_id = "cs_test_" + secrets.token_hex(24)
    return {
        "id": session_id,
        "object": "checkout.session",
        "cancel_url": form.get("cancel_url"),
        "client_reference_id": form.get("client_reference_id"),
        "created": int(time.time()),
        "currency": "usd",
        "customer": None,
        "customer_email": form.get("customer_email"),
        "expires_at": int(form.get("expires_at", time.time() + 86400)),
        "livemode": False,
        "metadata": form.get("metadata", {}),
        "mode": form["mode"],
        "payment_status": "unpaid",
        "status": "open",
        "subscription": None,
        "success_url": form["success_url"],
        "ui_mode": "hosted",
        "url": f"https://checkout.stripe.com/c/pay/{session_id}#fidkdWxOYHwnPyd1blpxYHZxWjA0",
    }
