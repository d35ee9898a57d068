"""`POST /v1/stripe/webhook`: Stripe's deliveries, handed to the inbox
(control/billing/inbox.py) that verifies and stores them.

Contract: the handler reads the raw body and the `Stripe-Signature` header and calls
`StripeInbox.receive`; it answers 200 `{"received": true, "duplicate": bool}` once the
event is committed. Every refusal is the inbox's domain error (400 for a bad
signature or event, 503 when it cannot be stored); before the inbox runs (start-up)
the answer is 503 `not_configured`, so that Stripe keeps the delivery queued. Stripe
signs its deliveries: the path needs no admin credential.
"""

from __future__ import annotations

from aiohttp import web

from control.appkeys import INBOX
from control.billing.inbox import Unavailable

stripe_routes = web.RouteTableDef()


@stripe_routes.post("/v1/stripe/webhook")
async def stripe_webhook(request: web.Request) -> web.Response:
    """Stripe's deliveries: verify and store, reply at once; the inbox's `run` does the work."""
    inbox = request.app.get(INBOX)
    if inbox is None:  # not wired (yet): a 5xx keeps the event queued at Stripe
        raise Unavailable("the Stripe inbox is not running", code="not_configured")
    payload = await request.read()
    stored = await inbox.receive(payload, request.headers.get("Stripe-Signature"))
    return web.json_response({"received": True, "duplicate": not stored})
