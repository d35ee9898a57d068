"""Volume cost (issue 13, point 7): the fake's GET /pricing keeps the reference's shape, the
Hetzner provider reads the volume price through the real hcloud client at validate time
(and a failed or empty read never fails it), and the admin API and CLI show the volumes'
monthly cost beside the servers' cost."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from control.capacity.providers.base import Provider, ServerType, VolumePrice
from control.capacity.providers.hetzner import HetznerProvider
from control.capacity.providers.hetzner_volumes import volume_price_of
from control.capacity.providers.local import LocalProvider
from control.cli.render import cost_line, render_servers
from control.settings import Settings
from tests.fakes.hetzner import HetznerFake, hetzner_fake_fixture  # noqa: F401
from tests.fixtures import ControlPlane

# What ../shared/reference/hetzner-cloud-openapi.yml's get_pricing marks required, level by level.
REQUIRED = {
    "pricing": (
        "currency",
        "vat_rate",
        "primary_ips",
        "floating_ips",
        "image",
        "volume",
        "server_backup",
        "server_types",
        "load_balancer_types",
        "floating_ip",
    ),
    "primary_ips[]": ("type", "prices"),
    "primary_ips[].prices[]": ("location", "price_hourly", "price_monthly"),
    "floating_ips[]": ("type", "prices"),
    "floating_ips[].prices[]": ("location", "price_monthly"),
    "server_types[]": ("id", "name", "prices"),
    "server_types[].prices[]": (
        "location",
        "price_hourly",
        "price_monthly",
        "included_traffic",
        "price_per_tb_traffic",
    ),
    "load_balancer_types[]": ("id", "name", "prices"),
}


@pytest.fixture
async def provider(hetzner_fake: HetznerFake) -> AsyncIterator[HetznerProvider]:
    made = HetznerProvider(hetzner_fake.token, hetzner_fake.url, ("cpx22",), ("nbg1",), timeout=5)
    yield made
    await made.close()


def _money_ok(money: dict[str, str], vat: Decimal) -> bool:
    net, gross = Decimal(money["net"]), Decimal(money["gross"])
    return abs(net * (1 + vat / 100) - gross) < Decimal("0.0001")


async def test_the_fake_serves_pricing_in_the_references_shape(hetzner_fake: HetznerFake) -> None:
    headers = {"Authorization": f"Bearer {hetzner_fake.token}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{hetzner_fake.url}/pricing", headers=headers) as reply:
            assert reply.status == 200
            pricing = (await reply.json())["pricing"]
    assert set(REQUIRED["pricing"]) <= set(pricing)
    for key in ("primary_ips", "floating_ips", "server_types", "load_balancer_types"):
        for item in pricing[key]:
            assert set(REQUIRED[f"{key}[]"]) <= set(item), key
            for price in item["prices"]:
                assert set(REQUIRED.get(f"{key}[].prices[]", ("location",))) <= set(price)
    vat = Decimal(pricing["vat_rate"])
    assert (pricing["currency"], vat) == ("EUR", Decimal("19.00"))
    per_gb = pricing["volume"]["price_per_gb_month"]
    assert per_gb["net"] == "0.0440" and _money_ok(per_gb, vat)  # decimal strings, as the API's
    assert _money_ok(pricing["image"]["price_per_gb_month"], vat)
    assert _money_ok(pricing["floating_ip"]["price_monthly"], vat)
    cpx22 = next(t for t in pricing["server_types"] if t["name"] == "cpx22")
    listed = next(t for t in hetzner_fake.server_types if t["name"] == "cpx22")
    assert [p["price_hourly"]["net"] for p in cpx22["prices"]] == [
        p["price_hourly"]["net"] for p in listed["prices"]
    ]  # the two endpoints agree, as the real API's do


async def test_a_request_without_the_token_is_refused(hetzner_fake: HetznerFake) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{hetzner_fake.url}/pricing") as reply:
            assert reply.status == 401
            assert (await reply.json())["error"]["code"] == "unauthorized"


async def test_validate_reads_the_volume_price_once_through_hcloud(
    provider: HetznerProvider, hetzner_fake: HetznerFake
) -> None:
    assert provider.volume_price() is None  # nothing read before validate
    hetzner_fake.pricing_currency = "USD"
    hetzner_fake.volume_price_per_gb_month = 0.0572
    await provider.validate()
    assert provider.volume_price() == VolumePrice(per_gb_month=0.0572, currency="USD")
    assert hetzner_fake.count("GET /pricing") == 1
    provider.server_type("cpx22")  # the catalogue is no reason to ask again
    assert hetzner_fake.count("GET /pricing") == 1


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (500, "server_error"),
        (503, "unavailable"),
        (429, "rate_limit_exceeded"),
        (403, "forbidden"),
        (404, "not_found"),  # an API (or proxy) without /pricing
    ],
)
async def test_a_failed_pricing_call_leaves_the_price_unknown_and_validate_passes(
    provider: HetznerProvider, hetzner_fake: HetznerFake, status: int, code: str
) -> None:
    hetzner_fake.inject("GET /pricing", status, code, retry_after=1)
    await provider.validate()
    assert provider.volume_price() is None
    assert provider.pairs() == [("cpx22", "nbg1")]  # validated all the same
    assert provider.server_type("cpx22").hourly_price == 0.012


async def test_a_reply_without_a_volume_price_leaves_it_unknown(
    provider: HetznerProvider, hetzner_fake: HetznerFake
) -> None:
    hetzner_fake.volume_price_per_gb_month = None
    await provider.validate()
    assert provider.volume_price() is None and provider.pairs() == [("cpx22", "nbg1")]


async def test_a_new_validate_reads_the_price_again(
    provider: HetznerProvider, hetzner_fake: HetznerFake
) -> None:
    hetzner_fake.inject("GET /pricing", 503, "unavailable")
    await provider.validate()
    assert provider.volume_price() is None
    await provider.validate()
    assert provider.volume_price() == VolumePrice(0.044, "EUR")


GOOD = {"currency": "EUR", "volume": {"price_per_gb_month": {"net": "0.0440", "gross": "0.0524"}}}


def _with(**changes: Any) -> dict[str, Any]:
    return {"pricing": {**GOOD, **changes}}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (_with(), VolumePrice(0.044, "EUR")),
        (_with(volume={"price_per_gb_month": {"net": "0", "gross": "0"}}), VolumePrice(0.0, "EUR")),
        ({"pricing": {"currency": "EUR"}}, None),  # no volume price at all
        ({}, None),
        ({"pricing": None}, None),
        (_with(currency=""), None),
        (_with(currency=None), None),
        (_with(volume={"price_per_gb_month": {"net": "a lot"}}), None),
        (_with(volume={"price_per_gb_month": {"net": "-0.01"}}), None),
        (_with(volume={"price_per_gb_month": {"net": "NaN"}}), None),
        (_with(volume={"price_per_gb_month": {"net": "Infinity"}}), None),
        (_with(volume={"price_per_gb_month": ["0.044"]}), None),
    ],
)
def test_volume_price_of(payload: dict[str, Any], expected: VolumePrice | None) -> None:
    assert volume_price_of(payload) == expected


async def test_the_local_provider_has_no_volume_price(tmp_path: Path) -> None:
    local = LocalProvider(str(tmp_path))
    await local.validate()
    assert local.volume_price() is None


# -- the views --------------------------------------------------------------------------


class PricedVolumes(LocalProvider):
    """The local provider with Hetzner-like prices, for the views without a real cloud."""

    def server_type(self, name: str) -> ServerType:
        return ServerType(name=name, cpus=4, memory_mb=8192, disk_gb=80, hourly_price=0.012)

    def volume_price(self) -> VolumePrice | None:
        return VolumePrice(0.044, "EUR")


def priced(settings: Settings) -> Provider:
    return PricedVolumes(settings.local_workers_dir)


async def add_volume(control: ControlPlane, user_id: str, size_gb: int) -> None:
    """A volume row as control/volumes/ records one (in a thread: the app, on this loop,
    may hold the write lock across an await)."""
    await asyncio.to_thread(_insert_volume, control, user_id, size_gb)


def _insert_volume(control: ControlPlane, user_id: str, size_gb: int) -> None:
    with sqlite3.connect(control.settings.database_path, timeout=10) as db:
        db.execute(
            "INSERT INTO volumes (user_id, name, provider, location, size_gb, state, created_at, "
            "updated_at) VALUES (?, ?, 'local', 'local', ?, 'detached', 0, 0)",
            (user_id, f"cf-test-{user_id}", size_gb),
        )


async def test_views_show_the_volumes_cost_beside_the_servers(
    control_factory: Callable[..., ControlPlane],
) -> None:
    control = control_factory(priced)
    await control.start()
    for name in ("alice", "bob"):
        assert (await control.admin("POST", "/v1/users", {"user_id": name, "subdomain": name}))[
            0
        ] == 201
    await add_volume(control, "alice", 10)
    await add_volume(control, "bob", 25)
    _, alice = await control.admin("GET", "/v1/users/alice")
    assert alice["volume"]["size_gb"] == 10
    assert (alice["volume"]["monthly_price"], alice["volume"]["currency"]) == (0.44, "EUR")
    _, listing = await control.admin("GET", "/v1/users")
    bob = next(u for u in listing["users"] if u["user_id"] == "bob")
    assert bob["volume"]["monthly_price"] == 1.1  # 25 GB x 0.044
    _, servers = await control.admin("GET", "/v1/servers")
    assert servers["volume_cost"] == {
        "count": 2,
        "size_gb": 35,
        "monthly_price": 1.54,
        "currency": "EUR",
    }
    assert "volumes 1.54/month (2 volumes, 35 GB)" in render_servers(servers)


async def test_without_a_price_the_views_say_unknown_not_zero(
    control_factory: Callable[..., ControlPlane],
) -> None:
    control = control_factory()  # the local provider: no volume price
    await control.start()
    assert (await control.admin("POST", "/v1/users", {"user_id": "alice", "subdomain": "alice"}))[
        0
    ] == 201
    await add_volume(control, "alice", 10)
    _, alice = await control.admin("GET", "/v1/users/alice")
    assert alice["volume"]["monthly_price"] is None and alice["volume"]["currency"] is None
    _, servers = await control.admin("GET", "/v1/servers")
    assert servers["volume_cost"] == {
        "count": 1,
        "size_gb": 10,
        "monthly_price": None,
        "currency": None,
    }


async def test_the_hetzner_price_reaches_the_admin_api(
    control_factory: Callable[..., ControlPlane], hetzner_fake: HetznerFake, tmp_path: Path
) -> None:
    from tests.fakes.hetzner import agent_dist, fleet_settings, provider_with_timeout

    settings = fleet_settings(hetzner_fake, agent_dist(tmp_path / "dist"))
    control = control_factory(provider_with_timeout(2.0, None), **settings)
    await control.start()
    assert (await control.admin("POST", "/v1/users", {"user_id": "alice", "subdomain": "alice"}))[
        0
    ] == 201
    await add_volume(control, "alice", 10)
    _, servers = await control.admin("GET", "/v1/servers")
    assert servers["volume_cost"]["monthly_price"] == 0.44
    assert servers["volume_cost"]["currency"] == "EUR"


SERVER = {"id": "s1", "status": "active", "hourly_price": 0.012}
COST = {"count": 2, "size_gb": 20, "monthly_price": 0.88, "currency": "EUR"}


@pytest.mark.parametrize(
    ("servers", "volume_cost", "line"),
    [
        (
            [SERVER, SERVER],
            COST,
            "cost (net, EUR): servers 0.0240/h ≈ 17.52/month; volumes 0.88/month (2 volumes, 20 GB)",
        ),
        (
            [SERVER, {"id": "s2", "status": "active", "hourly_price": None}],
            {**COST, "count": 1, "size_gb": 10, "monthly_price": 0.44},
            "cost (net, EUR): servers 0.0120/h ≈ 8.76/month (1 without a price); "
            "volumes 0.44/month (1 volume, 10 GB)",
        ),
        (
            [{**SERVER, "status": "deleted"}],
            {"count": 0, "size_gb": 0, "monthly_price": None, "currency": None},
            "cost (net, provider currency): servers -; volumes -",
        ),
        (
            [],
            {**COST, "monthly_price": None, "currency": None},
            "cost (net, provider currency): servers -; volumes - (2 volumes, 20 GB)",
        ),
    ],
)
def test_cost_line(servers: list[dict[str, Any]], volume_cost: dict[str, Any], line: str) -> None:
    assert cost_line({"servers": servers, "volume_cost": volume_cost}) == line
