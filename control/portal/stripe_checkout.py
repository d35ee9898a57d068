"""Stripe Checkout Sessions for the sign-up page, through the `stripe` library
(docs/portal.md).

Contract:
- `session_params(order, urls)` is pure: the Checkout Session a sign-up asks Stripe
  for: subscription mode, one line item of the plan's first Stripe price,
  `client_reference_id` and `metadata` (user_id, subdomain) as
  control/billing/decode.py reads them, the same metadata on the subscription (its
  events name the user too, docs/stripe.md), the buyer's e-mail, the session's expiry,
  and the success URL (the status page) and cancel URL (back to sign-up, which
  releases the name).
- `StripeCheckout.create` sends it (with the checkout's id as the idempotency key, so a
  retried request never opens two sessions) and returns the session's id and hosted
  URL; `expire` ends an open session and says whether the session is now expired:
  False when it was completed (paid: its webhook will create the user, so its name
  must stay reserved), as a retrieve tells when Stripe refuses to expire a session
  that is no longer open. Calls run off the event loop, bounded by `timeout`,
  without the library's own retries. Any failure of Stripe's is `CheckoutFailed`
  (503 `payment_unavailable`): the buyer is told to try again, the log has Stripe's
  reason; the key never appears in either.
- `CheckoutProvider` is what the routes need: anything with `create` and `expire`
  (control/portal/install.py picks this one; a local stand-in may replace it).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import stripe

from control.errors import IntegrationError

log = logging.getLogger(__name__)
TIMEOUT = 15.0


class CheckoutFailed(IntegrationError):
    code = "payment_unavailable"


@dataclass(frozen=True)
class Order:
    checkout_id: str
    user_id: str
    subdomain: str
    price_id: str
    email: str
    expires_at: int  # the Checkout Session's own expiry (unix seconds)


@dataclass(frozen=True)
class Urls:
    success: str
    cancel: str


@dataclass(frozen=True)
class Session:
    id: str
    url: str


class CheckoutProvider(Protocol):
    async def create(self, order: Order, urls: Urls) -> Session: ...

    async def expire(self, session_id: str) -> bool: ...


def session_params(order: Order, urls: Urls) -> dict[str, Any]:
    metadata = {"user_id": order.user_id, "subdomain": order.subdomain}
    return {
        "mode": "subscription",
        "line_items": [{"price": order.price_id, "quantity": 1}],
        "client_reference_id": order.user_id,
        "metadata": metadata,
        "subscription_data": {"metadata": metadata},
        "customer_email": order.email,
        "expires_at": order.expires_at,
        "success_url": urls.success,
        "cancel_url": urls.cancel,
    }


class StripeCheckout:
    def __init__(self, api_key: str, api_base: str = "", timeout: float = TIMEOUT) -> None:
        self.timeout = timeout
        self._client = stripe.StripeClient(
            api_key or "sk_missing",  # refused by Stripe: no key, no sign-up (logged)
            base_addresses={"api": api_base} if api_base else None,
            max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=timeout),
        )

    async def create(self, order: Order, urls: Urls) -> Session:
        params: Any = session_params(order, urls)
        options: Any = {"idempotency_key": f"portal-{order.checkout_id}"}
        session = await self._call(
            "create", lambda: self._client.v1.checkout.sessions.create(params, options)
        )
        if not session.id or not session.url:
            raise CheckoutFailed("Stripe answered a Checkout Session without an id or URL")
        return Session(id=session.id, url=session.url)

    async def expire(self, session_id: str) -> bool:
        sessions = self._client.v1.checkout.sessions
        try:
            await self._call("expire", lambda: sessions.expire(session_id))
            return True
        except CheckoutFailed as exc:
            if exc.upstream_status != 400:
                raise
        # 400: the session is not open any more; whether it was paid decides.
        session = await self._call("retrieve", lambda: sessions.retrieve(session_id))
        return bool(session.status == "expired")

    async def _call(self, what: str, call: Any) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                return await asyncio.to_thread(call)
        except stripe.StripeError as exc:
            log.warning(
                "Stripe Checkout %s failed: %s %s (request %s)",
                what,
                exc.http_status,
                exc.code or type(exc).__name__,
                exc.request_id,
            )
            raise CheckoutFailed(
                "the payment page could not be opened: please try again in a minute",
                upstream_status=exc.http_status or 0,
                correlation_id=exc.request_id,
            ) from exc
        except TimeoutError as exc:
            log.warning("Stripe Checkout %s timed out after %.0f s", what, self.timeout)
            raise CheckoutFailed(
                "the payment page could not be opened: please try again in a minute"
            ) from exc
