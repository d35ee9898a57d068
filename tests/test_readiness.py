"""/readyz asks the store, the provider and DNS; a store that cannot write makes
requests 503 `store_unavailable` (never a 500) while /healthz stays 200."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from control.api.readiness import Check, StoreProbe, dns_check, provider_check, verdict
from control.appkeys import DNS_HEALTH, DNS_SYNC, FLEET, PROVIDER_HEALTH, SETTINGS
from control.db.store import Store
from control.dns.provider import NoDns
from control.dns.sync import DnsSync
from control.health import ProviderHealth, ProviderState
from tests.fixtures import ControlPlane, make_settings

OK, DOWN = Check(True, "fine"), Check(False, "down")
REQUIRED_OK, REQUIRED_DOWN = Check(True, "fine", True), Check(False, "down", True)


@pytest.mark.parametrize(
    ("checks", "expected"),
    [
        ({"store": REQUIRED_OK, "provider": OK, "dns": OK}, (200, "ready")),
        ({"store": REQUIRED_OK, "provider": DOWN, "dns": OK}, (200, "degraded")),
        ({"store": REQUIRED_OK, "provider": OK, "dns": DOWN}, (200, "degraded")),
        ({"store": REQUIRED_DOWN, "provider": OK, "dns": OK}, (503, "not_ready")),
        ({"store": REQUIRED_DOWN, "provider": DOWN, "dns": DOWN}, (503, "not_ready")),
        ({}, (200, "ready")),
    ],
)
def test_verdict(checks: dict[str, Check], expected: tuple[int, str]) -> None:
    assert verdict(checks) == expected


async def get(control: ControlPlane, path: str) -> tuple[int, dict[str, Any]]:
    async with control.session.get(control.url + path) as r:
        return r.status, await r.json()


async def test_a_healthy_control_plane_is_ready(control: ControlPlane) -> None:
    status, body = await get(control, "/readyz")
    assert status == 200, body
    assert body["status"] == "ready"
    assert body["checks"]["store"] == {"ok": True, "detail": "writable", "required": True}
    assert body["checks"]["provider"]["ok"] is True
    assert body["checks"]["dns"] == {
        "ok": True,
        "detail": "no DNS provider configured",
        "required": False,
    }


@pytest.mark.sqlite_only(
    "SQLite's query_only pragma; tests/test_postgres_failures.py has PostgreSQL's"
)
async def test_a_store_that_cannot_write_is_503_and_not_ready(control: ControlPlane) -> None:
    assert control.app is not None
    # A real read-only database, as SQLite reports a read-only file.
    await control.app[FLEET].store.write(lambda c: c.execute("PRAGMA query_only = 1"))
    status, body = await control.admin(
        "POST", "/v1/users", {"user_id": "alice", "subdomain": "alice"}
    )
    assert status == 503, body
    assert body["error"]["code"] == "store_unavailable"
    assert "readonly database" in body["error"]["message"]
    status, body = await get(control, "/readyz")
    assert (status, body["status"]) == (503, "not_ready")
    assert body["checks"]["store"]["ok"] is False
    assert "readonly database" in body["checks"]["store"]["detail"]
    assert (await get(control, "/healthz"))[0] == 200  # liveness: the process serves


class CountingStore(Store):
    """The real store, counting the probes that reach it."""

    probes = 0

    async def probe(self) -> None:
        self.probes += 1
        await super().probe()


async def test_the_store_probe_writes_at_most_once_per_interval(tmp_path: Path) -> None:
    store = CountingStore(str(tmp_path / "clawfleet.db"))
    await store.open()
    now = 100.0
    probe = StoreProbe(interval=1.0, clock=lambda: now)
    try:
        for _ in range(5):
            assert (await probe.check(store)).ok
        assert store.probes == 1
        now += 0.999
        await probe.check(store)
        assert store.probes == 1
        now += 0.001
        await probe.check(store)
        assert store.probes == 2
    finally:
        await store.close()


@pytest.mark.parametrize(("state", "ok"), [("ok", True), ("validating", False), ("invalid", False)])
def test_provider_check_follows_provider_health(state: ProviderState, ok: bool) -> None:
    app = web.Application()
    health = app[PROVIDER_HEALTH] = ProviderHealth()
    health.update(state, "what the provider said")
    assert provider_check(app) == Check(ok, f"{state}: what the provider said")


def test_dns_check_follows_verification_and_the_last_round(tmp_path: Path) -> None:
    app = web.Application()
    settings = app[SETTINGS] = make_settings(tmp_path, dns_provider="cloudflare")
    health = app[DNS_HEALTH] = ProviderHealth()
    health.update("validating", "Cloudflare answered 503")
    assert dns_check(app) == Check(False, "validating: Cloudflare answered 503")
    health.update("ok", "verified")
    assert dns_check(app) == Check(True, "ok: verified")
    sync = app[DNS_SYNC] = DnsSync(settings, Store(str(tmp_path / "db")), NoDns(), health)
    sync.counters.last_error = "zone busy"
    assert dns_check(app) == Check(False, "last round failed: zone busy")
    sync.counters.last_error = None  # a clean round
    assert dns_check(app).ok
