"""A Stripe billing portal session for a customer (cards, invoices, cancelling),
created through the stripe library (docs/portal.md).

Contract: `billing_portal_url(settings, customer_id, return_url)` creates a
`billing_portal.Session` for the Stripe customer and returns its one-time URL. The
stripe client is synchronous: the call runs in a thread, bounded by `TIMEOUT`, with
no retries of the library's own (the customer presses the button again). A refusal or
an outage is a 503 `upstream_error` naming Stripe's error class and request id, never
the API key; without STRIPE_SECRET_KEY it is a 503 `billing_off`.
"""

from __future__ import annotations

import asyncio

import stripe
from stripe.params.billing_portal import SessionCreateParams

from control.errors import IntegrationError, ServiceUnavailable
from control.settings import Settings

TIMEOUT = 20.0


async def billing_portal_url(settings: Settings, customer_id: str, return_url: str) -> str:
    if not settings.stripe_secret_key:
        raise ServiceUnavailable("billing is not set up here", code="billing_off")
    client = stripe.StripeClient(
        settings.stripe_secret_key,
        base_addresses={"api": settings.stripe_api_base} if settings.stripe_api_base else None,
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=TIMEOUT),
    )

    def create() -> str:
        params: SessionCreateParams = {"customer": customer_id, "return_url": return_url}
        return str(client.v1.billing_portal.sessions.create(params).url)

    try:
        async with asyncio.timeout(TIMEOUT):
            return await asyncio.to_thread(create)
    except stripe.StripeError as exc:
        raise IntegrationError(
            f"Stripe refused the billing portal session ({type(exc).__name__})",
            upstream_status=exc.http_status,
            correlation_id=exc.request_id,
        ) from None
    except TimeoutError:
        raise IntegrationError("Stripe did not answer in time") from None
