"""Prices for the fake Stripe API (tests/fakes/stripe_api.py), in Stripe's wire format.

- `add(price_id, unit_amount, currency, product_name, interval="month", interval_count=1)`:
  a Price of a Product with that name (`interval=None`: a one-time price;
  `unit_amount=None`: a price without a fixed amount, as a tiered one has).
- `GET /v1/prices/{id}`: the Price; its `product` is the Product's id, or the whole
  Product object when asked with `expand[0]=product` (as Stripe expands); 404
  `resource_missing` for an unknown id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Json = dict[str, Any]


@dataclass
class Prices:
    items: dict[str, Json] = field(default_factory=dict)
    products: dict[str, Json] = field(default_factory=dict)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/prices/{id}", self.retrieve)

    def add(
        self,
        price_id: str,
        unit_amount: int | None,
        currency: str,
        product_name: str,
        interval: str | None = "month",
        interval_count: int = 1,
    ) -> str:
        product_id = "prod_" + price_id.removeprefix("price_")
        self.products[product_id] = {
            "id": product_id,
            "object": "product",
            "active": True,
            "name": product_name,
            "livemode": False,
        }
        recurring = (
            None
            if interval is None
            else {"interval": interval, "interval_count": interval_count, "usage_type": "licensed"}
        )
        self.items[price_id] = {
            "id": price_id,
            "object": "price",
            "active": True,
            "billing_scheme": "per_unit" if unit_amount is not None else "tiered",
            "created": int(time.time()),
            "currency": currency,
            "livemode": False,
            "nickname": None,
            "product": product_id,
            "recurring": recurring,
            "type": "one_time" if interval is None else "recurring",
            "unit_amount": unit_amount,
            "unit_amount_decimal": None if unit_amount is None else str(unit_amount),
        }
        return price_id

    async def retrieve(self, request: web.Request) -> web.Response:
        price_id = request.match_info["id"]
        price = self.items.get(price_id)
        if price is None:
            error = {
                "type": "invalid_request_error",
                "code": "resource_missing",
                "message": f"No such price: '{price_id}'",
                "param": "id",
            }
            return web.json_response({"error": error}, status=404)
        expand = [v for k, v in request.query.items() if k.startswith("expand[")]
        if "product" in expand:  # the library sends expand[0]=product
            price = {**price, "product": self.products[price["product"]]}
        return web.json_response(price)
