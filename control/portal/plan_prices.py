"""What each plan on sale is called and costs, in words a buyer reads (docs/portal.md,
"Plans and prices").

Contract:
- `price_words(price)` (pure): "$20.00 a month", "€9.50 every 3 months", "¥500 once";
  None for a price without a fixed amount (tiered or metered).
- `PlanPrices.cards(sold)`: per plan on sale (name → the Price it is sold at, from
  control/portal/stand_in.py `price_of`), a `Card`: `display_name`, `price` (words or
  None) and `demo`.
  - With a Stripe key: the Price is retrieved through the stripe library with its
    Product expanded; the display name is the Product's name, the words come from the
    Price's `unit_amount`, `currency` and `recurring`. Each answer is kept CACHE_SECONDS
    (prices change rarely; a page load must not cost a Stripe call per plan); a
    failure (logged with Stripe's status and request id, never the key) shows the card
    without a price and is asked again after RETRY_SECONDS. The plans are asked at once.
  - With the local Checkout stand-in (no key): DEMO, the amount the stand-in's
    webhook events carry (control/billing/simulated.py), with `demo` true.
  - The display name falls back to the plan's name in words ("pro-max" → "Pro max").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import stripe
from aiohttp import web

from control.appkeys import SETTINGS
from control.portal import stand_in
from control.settings import Settings

log = logging.getLogger(__name__)
CACHE_SECONDS = 600.0
RETRY_SECONDS = 30.0
TIMEOUT = 5.0
_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "inr": "₹"}
# Stripe's amounts are in the currency's smallest unit, except these have none.
_ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())


@dataclass(frozen=True)
class Price:
    unit_amount: int | None
    currency: str
    interval: str | None  # None: a one-time price
    interval_count: int = 1
    product_name: str | None = None


@dataclass(frozen=True)
class Card:
    display_name: str
    price: str | None
    demo: bool


# What the stand-in's Pay button "charges" (control/billing/simulated.py's events).
DEMO = Price(2000, "usd", "month")


def price_words(price: Price) -> str | None:
    if price.unit_amount is None:
        return None
    currency = price.currency.lower()
    if currency in _ZERO_DECIMAL:
        figure = f"{price.unit_amount:,}"
    else:
        figure = f"{price.unit_amount / 100:,.2f}"
    symbol = _SYMBOLS.get(currency)
    amount = f"{symbol}{figure}" if symbol else f"{figure} {currency.upper()}"
    if price.interval is None:
        return f"{amount} once"
    if price.interval_count == 1:
        return f"{amount} a {price.interval}"
    return f"{amount} every {price.interval_count} {price.interval}s"


def plan_words(name: str) -> str:
    return name.replace("-", " ").replace("_", " ").capitalize()


class PlanPrices:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.demo = stand_in.enabled(settings)
        self.clock = clock
        self._cache: dict[str, tuple[float, Price | None]] = {}
        self._client = stripe.StripeClient(
            settings.stripe_secret_key or "sk_missing",
            base_addresses={"api": settings.stripe_api_base} if settings.stripe_api_base else None,
            max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=TIMEOUT),
        )

    async def cards(self, sold: Mapping[str, str]) -> dict[str, Card]:
        if self.demo:
            return {plan: Card(plan_words(plan), price_words(DEMO), True) for plan in sold}
        prices = await asyncio.gather(*(self.price(price_id) for price_id in sold.values()))
        return {
            plan: Card(
                (price and price.product_name) or plan_words(plan),
                price_words(price) if price else None,
                False,
            )
            for plan, price in zip(sold, prices, strict=True)
        }

    async def price(self, price_id: str) -> Price | None:
        now = self.clock()
        kept = self._cache.get(price_id)
        if kept is not None and kept[0] > now:
            return kept[1]
        found = await self._retrieve(price_id)
        self._cache[price_id] = (now + (CACHE_SECONDS if found else RETRY_SECONDS), found)
        return found

    async def _retrieve(self, price_id: str) -> Price | None:
        params: Any = {"expand": ["product"]}
        try:
            async with asyncio.timeout(TIMEOUT):
                raw = await asyncio.to_thread(self._client.v1.prices.retrieve, price_id, params)
        except stripe.StripeError as exc:
            log.warning(
                "Stripe price %s could not be read: %s %s (request %s)",
                price_id,
                exc.http_status,
                exc.code or type(exc).__name__,
                exc.request_id,
            )
            return None
        except TimeoutError:
            log.warning("Stripe price %s could not be read in %.0f s", price_id, TIMEOUT)
            return None
        return _price(raw.to_dict())


def _price(raw: dict[str, Any]) -> Price:
    recurring = raw.get("recurring")
    product = raw.get("product")  # expanded: the Product object; else only its id
    name = product.get("name") if isinstance(product, dict) else None
    return Price(
        unit_amount=raw.get("unit_amount"),
        currency=str(raw.get("currency") or ""),
        interval=recurring.get("interval") if recurring else None,
        interval_count=int(recurring.get("interval_count") or 1) if recurring else 1,
        product_name=str(name) if name else None,
    )


PLAN_PRICES: web.AppKey[PlanPrices] = web.AppKey("portal_plan_prices", PlanPrices)


def install_plan_prices(app: web.Application) -> None:
    app[PLAN_PRICES] = PlanPrices(app[SETTINGS])
