"""Cloudflare outages: the control plane starts and serves, verifies the DNS provider in
the background with backoff, holds DNS rounds until then, and shows the state (issue 10).

Against the fake Cloudflare API (tests/fakes/cloudflare.py), driven by the real SDK.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from control.appkeys import DNS_HEALTH, DNS_SYNC
from control.db.store import Store
from control.dns.cloudflare import CloudflareDns, RateLimiter
from control.dns.cloudflare_api import CloudflareApi
from control.dns.provider import VERIFY_CAP, DnsError, is_refusal, verify_delay
from control.dns.sync import DnsSync
from tests.fakes.cloudflare import CloudflareFake
from tests.fixtures import ControlPlane, free_port, make_settings
from tests.test_dns_sync import ZONE, a_records, worker_at

VERIFY = "GET /user/tokens/verify"
ZONE_READ = "GET /zones/{zone_id}"
LIST = "GET /zones/{zone_id}/dns_records"
BATCH = "POST /zones/{zone_id}/dns_records/batch"


class Stop(Exception):
    """Raised by a test's sleep to end a verification loop that would go on for ever."""


class Sleeps(list[float]):
    """Records the waits of the verification loop instead of waiting; `then` runs at
    each wait (e.g. to end the outage), `limit` waits at most."""

    def __init__(self, then: Callable[[int], None] = lambda n: None, limit: int = 10) -> None:
        super().__init__()
        self.then = then
        self.limit = limit

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)
        if len(self) > self.limit:
            raise Stop
        self.then(len(self))
        await asyncio.sleep(0)


@pytest.fixture
async def make_sync(
    cloudflare_fake: CloudflareFake, tmp_path: Path
) -> AsyncIterator[Callable[..., DnsSync]]:
    made: list[CloudflareDns] = []
    settings = make_settings(tmp_path, base_domain=ZONE)

    def factory(sleep: Sleeps, **kwargs: Any) -> DnsSync:
        kwargs.setdefault("api_base", cloudflare_fake.url)
        kwargs.setdefault("timeout", 5.0)
        kwargs.setdefault("limiter", RateLimiter(budget=10**6, window=1.0, burst=10**6))
        token = kwargs.pop("token", cloudflare_fake.token)
        zone_id = kwargs.pop("zone_id", cloudflare_fake.zone_id)
        base = kwargs.pop("base_domain", ZONE)
        provider = CloudflareDns(CloudflareApi(token, zone_id, **kwargs), base, "prod")
        made.append(provider)
        # The store is never opened: verification and held rounds must not need it.
        return DnsSync(
            settings, Store(str(tmp_path / "x.db")), provider, sleep=sleep, rand=lambda: 1.0
        )

    yield factory
    for provider in made:
        await provider.close()


# -- the pure rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "refusal"),
    [
        (None, True),  # the answer itself is wrong: inactive token, BASE_DOMAIN outside
        (400, True),
        (401, True),  # token refused
        (403, True),  # no permission
        (404, True),  # unknown zone
        (0, False),  # no answer: timeout, connection refused
        (408, False),
        (429, False),
        (500, False),
        (503, False),
        (522, False),  # Cloudflare's edge
    ],
)
def test_is_refusal(status: int | None, refusal: bool) -> None:
    assert is_refusal(DnsError("x", upstream_status=status)) is refusal


@pytest.mark.parametrize(
    ("attempt", "error", "rand", "expected"),
    [
        (1, DnsError("x", upstream_status=503), 1.0, 2.0),
        (1, DnsError("x", upstream_status=503), 0.0, 1.0),  # jitter: never below half
        (3, DnsError("x", upstream_status=0), 1.0, 8.0),
        (30, DnsError("x", upstream_status=503), 1.0, VERIFY_CAP),
        (1, DnsError("x", upstream_status=429, retry_after=7.0), 0.0, 7.0),  # the provider's word
        (
            1,
            DnsError("x", upstream_status=429, retry_after=9000.0),
            0.0,
            300.0,
        ),  # capped: 5 minutes
        (2, DnsError("x", upstream_status=429), 1.0, 4.0),  # no Retry-After: backoff
        (1, None, 1.0, 2.0),  # not a DnsError at all (an HTML page): backoff
    ],
)
def test_verify_delay(attempt: int, error: DnsError | None, rand: float, expected: float) -> None:
    assert verify_delay(attempt, error, rand) == pytest.approx(expected)


# -- the verification loop -----------------------------------------------------------------


def fail_twice(fake: CloudflareFake, how: str) -> None:
    if how == "503":
        fake.inject(VERIFY, 503, 10000, "unavailable", times=2)
    elif how == "429":
        fake.inject(VERIFY, 429, 971, "slow down", times=2, retry_after=7)
    elif how == "522 on the zone read":
        fake.inject(ZONE_READ, 522, 522, "origin timed out", times=2)
    elif how == "503 on the edit check":
        fake.inject(BATCH, 503, 10000, "unavailable", times=2)
    elif how == "account token, zone read 503":  # was taken for a refused token
        fake.user_token = False
        fake.inject(ZONE_READ, 503, 10000, "unavailable", times=2)
    elif how == "timeout":
        fake.delay(VERIFY, 5.0, times=2)  # the client gives up after 0.5 s


@pytest.mark.parametrize(
    ("how", "waits"),
    [
        ("503", [2.0, 4.0]),
        ("429", [7.0, 7.0]),
        ("522 on the zone read", [2.0, 4.0]),
        ("503 on the edit check", [2.0, 4.0]),
        ("account token, zone read 503", [2.0, 4.0]),
        ("timeout", [2.0, 4.0]),
    ],
)
async def test_an_outage_is_retried_with_backoff_until_verified(
    make_sync: Callable[..., DnsSync], cloudflare_fake: CloudflareFake, how: str, waits: list[float]
) -> None:
    """Before the fix each of these raised out of verify() at start-up: exit 2."""
    fail_twice(cloudflare_fake, how)
    states: list[str] = []
    sleeps = Sleeps(lambda n: states.append(sync.health.state))
    sync = make_sync(sleeps, timeout=0.5)
    assert await sync.verify_until_ok() is None
    assert sync.health.state == "ok" and sync.health.attempts == 3
    assert states == ["validating", "validating"]
    assert sleeps == waits
    assert sync.counters.last_error is None


async def test_no_answer_at_all_is_an_outage(make_sync: Callable[..., DnsSync]) -> None:
    sleeps = Sleeps(limit=2)
    sync = make_sync(sleeps, api_base=f"http://127.0.0.1:{free_port()}/client/v4")
    with pytest.raises(Stop):
        await sync.verify_until_ok()
    assert sync.health.state == "validating"
    assert "no answer" in sync.health.detail
    assert sync.health.next_attempt_at is not None
    assert sleeps == [2.0, 4.0, 8.0]
    assert sync.counters.last_error is not None  # /readyz sees it


def refuse(fake: CloudflareFake, how: str) -> dict[str, Any]:
    if how == "token":
        return {"token": "wrong-token"}
    if how == "zone":
        return {"zone_id": "0" * 32}
    if how == "base domain":
        return {"base_domain": "agents.example.org"}
    if how == "no dns edit":
        fake.scopes = {"zone:read", "dns:read"}
    elif how == "expired":
        fake.token_status = "expired"
    return {}


@pytest.mark.parametrize("how", ["token", "zone", "base domain", "no dns edit", "expired"])
async def test_a_refusal_is_final(
    make_sync: Callable[..., DnsSync], cloudflare_fake: CloudflareFake, how: str
) -> None:
    sleeps = Sleeps()
    sync = make_sync(sleeps, **refuse(cloudflare_fake, how))
    refusal = await sync.verify_until_ok()
    assert refusal is not None and is_refusal(refusal)
    assert sync.health.state == "invalid" and sync.health.attempts == 1
    assert sleeps == []
    assert sync.health.detail == refusal.message == sync.counters.last_error


async def test_a_refusal_after_an_outage_stops_retrying(
    make_sync: Callable[..., DnsSync], cloudflare_fake: CloudflareFake
) -> None:
    cloudflare_fake.outage(503)
    sleeps = Sleeps(lambda n: (cloudflare_fake.clear_faults(), cloudflare_fake.scopes.clear()))
    sync = make_sync(sleeps)
    assert await sync.verify_until_ok() is not None
    assert sync.health.state == "invalid" and sleeps == [2.0]


async def test_rounds_wait_for_the_verification(
    make_sync: Callable[..., DnsSync], cloudflare_fake: CloudflareFake
) -> None:
    sync = make_sync(Sleeps())
    await sync.run()  # "validating": before the fix a round listed (and wrote) records
    assert cloudflare_fake.calls == [] and sync.counters.rounds == 0
    sync.health.update("invalid", "refused")
    await sync.run()
    assert cloudflare_fake.calls == []


# -- the whole control plane ---------------------------------------------------------------


@pytest.fixture
def dns_plane(
    control_factory: Callable[..., ControlPlane], cloudflare_fake: CloudflareFake
) -> Callable[..., ControlPlane]:
    def make(**overrides: Any) -> ControlPlane:
        settings: dict[str, Any] = {
            "dns_provider": "cloudflare",
            "cloudflare_api_token": cloudflare_fake.token,
            "cloudflare_zone_id": cloudflare_fake.zone_id,
            "cloudflare_api_base": cloudflare_fake.url,
            "base_domain": ZONE,
            "dns_reconcile_interval": 3600.0,
            "provider_startup_wait": 0.5,
        }
        settings.update(overrides)
        return control_factory(**settings)

    return make


async def until(check: Callable[[], Any], seconds: float = 10.0) -> None:
    # Polls what the running app's background verification changes: it exposes no event.
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_control_plane_serves_while_cloudflare_is_down_and_catches_up(
    dns_plane: Callable[..., ControlPlane], cloudflare_fake: CloudflareFake
) -> None:
    """Before the fix start() raised DnsError after the SDK's retries (exit 2)."""
    cloudflare_fake.outage(503)
    control = dns_plane()
    await control.start()
    assert control.app is not None
    health = control.app[DNS_HEALTH]
    await until(lambda: health.attempts >= 1 and health.state == "validating")
    assert "503" in health.detail
    async with control.session.get(control.url + "/healthz") as r:
        assert r.status == 200
        assert (await r.json())["dns"]["state"] == "validating"
    async with control.session.get(control.url + "/readyz") as r:
        assert (await r.json())["checks"]["dns"]["ok"] is False
    await worker_at(control, "203.0.113.50", "a")  # the agent protocol serves
    status, _ = await control.admin("POST", "/v1/users", {"user_id": "eve", "subdomain": "eve"})
    assert status == 201  # the admin API serves
    _, listing = await control.admin("GET", "/v1/servers")  # what the dashboard polls
    assert listing["dns"]["state"] == "validating" and "503" in listing["dns"]["detail"]
    async with control.session.get(control.url + "/metrics") as r:
        text = await r.text()
    assert 'clawfleet_dns_provider_state{state="validating"} 1.0' in text
    assert 'clawfleet_dns_provider_state{state="ok"} 0.0' in text
    await control.app[DNS_SYNC].run()
    assert cloudflare_fake.count(LIST) == 0  # no round before the verification
    cloudflare_fake.clear_faults()
    await until(lambda: health.state == "ok")
    # Verified: the record eve needed during the outage is published without a nudge.
    await until(lambda: a_records(cloudflare_fake) == {"eve.example.com": "203.0.113.50"})
    async with control.session.get(control.url + "/metrics") as r:
        assert 'clawfleet_dns_provider_state{state="ok"} 1.0' in await r.text()


async def test_a_slow_cloudflare_does_not_hold_start_up(
    dns_plane: Callable[..., ControlPlane], cloudflare_fake: CloudflareFake
) -> None:
    cloudflare_fake.delay(VERIFY, 30.0)  # answers long after the start-up wait
    control = dns_plane()
    await control.start()
    assert control.app is not None
    # Start-up returned with the one check still in flight: not answered (that is "ok"),
    # not timed out (that records its failure and when the next attempt is due).
    health = control.app[DNS_HEALTH]
    assert (health.state, health.detail, health.attempts) == ("validating", "not validated yet", 1)
    assert health.next_attempt_at is None and cloudflare_fake.count(VERIFY) == 1


async def test_a_refused_token_still_stops_start_up(
    dns_plane: Callable[..., ControlPlane],
) -> None:
    control = dns_plane(cloudflare_api_token="wrong-token")
    with pytest.raises(DnsError, match="CLOUDFLARE_API_TOKEN was refused"):
        await control.start()


async def test_without_a_dns_provider_the_state_is_ok(control: ControlPlane) -> None:
    assert control.app is not None
    assert control.app[DNS_HEALTH].state == "ok"
    async with control.session.get(control.url + "/healthz") as r:
        assert (await r.json())["dns"]["state"] == "ok"
