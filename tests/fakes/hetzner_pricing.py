"""GET /v1/pricing for the fake Hetzner Cloud API; tests/fakes/hetzner.py registers it on its
app, so faults (`inject("GET /pricing", ...)`, `chaos`, `delay`), the rate-limit budget,
auth and the error envelope work here as for every other endpoint.

The reply has the shape of ../shared/reference/hetzner-cloud-openapi.yml's `get_pricing`,
with every field that schema marks required: `currency`, `vat_rate`, `primary_ips`,
`floating_ips`, `image`, `volume`, `server_backup`, `server_types`, `load_balancer_types`
and the deprecated `floating_ip`. Prices are decimal strings, `net` and `gross` (net plus
`vat_rate`). Server types' prices are those of `fake.server_types`, so the two endpoints
agree as the real API's do. What a test may change on the fake: `pricing_currency`,
`pricing_vat_rate` (a decimal string) and `volume_price_per_gb_month` (net; None leaves
`volume` out of the reply, as an API that stopped pricing volumes would).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from aiohttp import web

from tests.fakes.hetzner import HetznerFake, Json

PRICING_ENDPOINTS = frozenset({"GET /pricing"})
_LOAD_BALANCER_HOURLY = 0.0098  # lb11, net, everywhere
_PRIMARY_IPV4_HOURLY = 0.0008


def register(app: web.Application, fake: HetznerFake) -> None:
    async def get_pricing(request: web.Request) -> web.StreamResponse:
        return web.json_response({"pricing": pricing_document(fake)})

    app.router.add_get("/v1/pricing", get_pricing)


def pricing_document(fake: HetznerFake) -> Json:
    """The `pricing` object, built from the fake's state at the time of the call."""
    vat = Decimal(fake.pricing_vat_rate)
    locations = [str(loc["name"]) for loc in fake.locations]

    def money(net: Any) -> Json:
        value = Decimal(str(net))
        return {"net": f"{value:.4f}", "gross": f"{value * (1 + vat / 100):.4f}"}

    def hourly_and_monthly(hourly: float) -> list[Json]:
        return [
            {"location": loc, "price_hourly": money(hourly), "price_monthly": money(hourly * 730)}
            for loc in locations
        ]

    document: Json = {
        "currency": fake.pricing_currency,
        "vat_rate": fake.pricing_vat_rate,
        "primary_ips": [
            {"type": "ipv4", "prices": hourly_and_monthly(_PRIMARY_IPV4_HOURLY)},
            {"type": "ipv6", "prices": hourly_and_monthly(0.0)},
        ],
        "floating_ips": [
            {
                "type": kind,
                "prices": [{"location": loc, "price_monthly": money(m)} for loc in locations],
            }
            for kind, m in (("ipv4", 3.0), ("ipv6", 3.0))
        ],
        "image": {"price_per_gb_month": money(0.0110)},
        "server_backup": {"percentage": "20.00"},
        "server_types": [_server_type_prices(t, money) for t in fake.server_types],
        "load_balancer_types": [
            {
                "id": 1,
                "name": "lb11",
                "prices": [
                    {
                        **p,
                        "included_traffic": 20 * 1024**4,
                        "price_per_tb_traffic": money(1.0),
                    }
                    for p in hourly_and_monthly(_LOAD_BALANCER_HOURLY)
                ],
            }
        ],
        "floating_ip": {"price_monthly": money(3.0)},
    }
    if fake.volume_price_per_gb_month is not None:
        document["volume"] = {"price_per_gb_month": money(fake.volume_price_per_gb_month)}
    return document


def _server_type_prices(server_type: Json, money: Callable[[Any], Json]) -> Json:
    """One type's prices, as /server_types lists them, with this VAT rate's gross."""
    return {
        "id": server_type["id"],
        "name": server_type["name"],
        "prices": [
            {
                "location": p["location"],
                "price_hourly": money(p["price_hourly"]["net"]),
                "price_monthly": money(p["price_monthly"]["net"]),
                "included_traffic": p["included_traffic"],
                "price_per_tb_traffic": money(p["price_per_tb_traffic"]["net"]),
            }
            for p in server_type["prices"]
        ],
    }
