"""DNS: the pure planner and retry rule, NoDns, and CloudflareDns driving the real
`cloudflare` SDK against the local fake API (tests/fakes/cloudflare.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from cloudflare import AsyncCloudflare, BadRequestError

from control.dns import cloudflare
from control.dns.cloudflare import CloudflareDns, RateLimiter, parse_retry_after
from control.dns.cloudflare_api import CloudflareApi
from control.dns.provider import (
    MAX_ATTEMPTS,
    DnsError,
    DnsPlan,
    DnsProvider,
    DnsRecord,
    NoDns,
    fqdn,
    plan_dns,
    reconcile_dns,
    retry_delay,
)
from tests.fakes.cloudflare import CloudflareFake, cloudflare_fake_fixture  # noqa: F401

BASE = "u.example.com"  # BASE_DOMAIN, inside the fake's zone example.com
MARKER = "managed-by=clawfleet cluster=prod"
ALICE = "alice.u.example.com"
POST = "POST /zones/{zone_id}/dns_records"
LIST = "GET /zones/{zone_id}/dns_records"
PATCH = "PATCH /zones/{zone_id}/dns_records/{id}"
DELETE = "DELETE /zones/{zone_id}/dns_records/{id}"

Factory = Callable[..., CloudflareDns]


class Sleeps(list[float]):
    """Records the waits instead of waiting: back-off is asserted, never timed."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def make(cloudflare_fake: CloudflareFake, sleeps: Sleeps) -> AsyncIterator[Factory]:
    made: list[CloudflareDns] = []

    def factory(**kwargs: Any) -> CloudflareDns:
        kwargs.setdefault("token", cloudflare_fake.token)
        kwargs.setdefault("zone_id", cloudflare_fake.zone_id)
        kwargs.setdefault("base_domain", BASE)
        kwargs.setdefault("cluster", "prod")
        kwargs.setdefault("api_base", cloudflare_fake.url)
        kwargs.setdefault("timeout", 5.0)
        kwargs.setdefault("sleep", sleeps)
        # A limiter that never waits, so `sleeps` holds only the retry back-off.
        kwargs.setdefault("limiter", RateLimiter(budget=10**6, window=1.0, burst=10**6))
        # The top of the jitter range: waits are the nominal back-off, asserted exactly.
        kwargs.setdefault("rand", lambda: 1.0)
        base_domain, cluster = kwargs.pop("base_domain"), kwargs.pop("cluster")
        provider = CloudflareDns(CloudflareApi(**kwargs), base_domain, cluster)
        made.append(provider)
        return provider

    yield factory
    for provider in made:
        await provider.close()


def ours(fake: CloudflareFake, name: str | None = None) -> list[dict[str, Any]]:
    return [
        r
        for r in fake.records.values()
        if r["comment"] == MARKER and (name is None or r["name"] == name)
    ]


# -- verify -------------------------------------------------------------------------------


async def test_verify_accepts_a_token_with_dns_edit(
    make: Factory, cloudflare_fake: CloudflareFake
) -> None:
    await make().verify()
    for endpoint in (
        "GET /user/tokens/verify",
        "GET /zones/{zone_id}",
        LIST,
        "POST /zones/{zone_id}/dns_records/batch",
    ):
        assert cloudflare_fake.count(endpoint) == 1, endpoint
    assert cloudflare_fake.records == {}  # the edit check writes nothing


async def test_verify_bad_token_names_the_setting_without_leaking_it(
    make: Factory, cloudflare_fake: CloudflareFake, caplog: pytest.LogCaptureFixture
) -> None:
    token = "wrong-token-" + "z" * 40
    with caplog.at_level(logging.DEBUG), pytest.raises(DnsError) as info:
        await make(token=token).verify()
    assert "CLOUDFLARE_API_TOKEN" in info.value.message
    assert "not a valid API token" in info.value.message
    assert token not in str(info.value)
    assert token not in caplog.text
    assert cloudflare_fake.token not in caplog.text


async def test_verify_without_dns_edit_names_the_permission(
    make: Factory, cloudflare_fake: CloudflareFake
) -> None:
    cloudflare_fake.scopes = {"zone:read", "dns:read"}
    with pytest.raises(DnsError) as info:
        await make().verify()
    message = info.value.message
    assert "CLOUDFLARE_API_TOKEN lacks Zone:DNS:Edit on example.com" in message
    assert cloudflare_fake.zone_id in message
    assert info.value.upstream_status == 403 and info.value.upstream_code == 10000
    assert cloudflare_fake.token not in message
    assert cloudflare_fake.records == {}


async def test_verify_without_any_dns_right(make: Factory, cloudflare_fake: CloudflareFake) -> None:
    cloudflare_fake.scopes = {"zone:read"}
    with pytest.raises(DnsError) as info:
        await make().verify()
    assert "lacks Zone:DNS:Edit (even DNS read is denied)" in info.value.message
    assert cloudflare_fake.count("POST /zones/{zone_id}/dns_records/batch") == 0


async def test_verify_without_zone_read(make: Factory, cloudflare_fake: CloudflareFake) -> None:
    cloudflare_fake.scopes = {"dns:edit"}
    with pytest.raises(DnsError) as info:
        await make().verify()
    assert "CLOUDFLARE_API_TOKEN lacks Zone:Read" in info.value.message


async def test_verify_unknown_zone(make: Factory) -> None:
    with pytest.raises(DnsError) as info:
        await make(zone_id="0" * 32).verify()
    assert f"CLOUDFLARE_ZONE_ID {'0' * 32} is not a zone" in info.value.message
    assert info.value.upstream_code == 7003


@pytest.mark.parametrize("status", ["disabled", "expired"])
async def test_verify_inactive_token(
    make: Factory, cloudflare_fake: CloudflareFake, status: str
) -> None:
    cloudflare_fake.token_status = status
    with pytest.raises(DnsError) as info:
        await make().verify()
    assert f"CLOUDFLARE_API_TOKEN is {status}" in info.value.message


async def test_verify_accepts_an_account_token_that_reads_the_zone(
    make: Factory, cloudflare_fake: CloudflareFake
) -> None:
    cloudflare_fake.user_token = False  # /user/tokens/verify says 401 "Invalid API Token"
    await make().verify()
    assert cloudflare_fake.count("POST /zones/{zone_id}/dns_records/batch") == 1


async def test_verify_base_domain_outside_the_zone(make: Factory) -> None:
    with pytest.raises(DnsError) as info:
        await make(base_domain="agents.example.org").verify()
    assert "BASE_DOMAIN agents.example.org is not in the zone example.com" in info.value.message


def test_empty_settings_are_refused() -> None:
    with pytest.raises(DnsError, match="CLOUDFLARE_API_TOKEN is empty"):
        CloudflareApi("", "zone")
    with pytest.raises(DnsError, match="CLOUDFLARE_ZONE_ID is empty"):
        CloudflareApi("t", "")


# -- upsert -------------------------------------------------------------------------------


async def test_upsert_creates_a_proxied_auto_ttl_record_with_our_comment(
    make: Factory, cloudflare_fake: CloudflareFake
) -> None:
    record = await make().upsert(ALICE, "203.0.113.7")
    [stored] = cloudflare_fake.records.values()
    assert stored["name"] == ALICE and stored["type"] == "A"
    assert stored["content"] == "203.0.113.7"
    assert stored["proxied"] is True and stored["ttl"] == 1
    assert stored["comment"] == MARKER
    assert record == DnsRecord(ALICE, "203.0.113.7", stored["id"], proxied=True, ours=True)
    # The SDK sends the exact-name filter as `name.exact`.
    first = next(c for c in cloudflare_fake.calls if c.endpoint == LIST)
    assert first.query["name.exact"] == ALICE


async def test_upsert_again_is_a_no_op(make: Factory, cloudflare_fake: CloudflareFake) -> None:
    dns = make()
    first = await dns.upsert(ALICE, "203.0.113.7")
    second = await dns.upsert(ALICE.upper() + ".", "203.0.113.7")
    assert second.record_id == first.record_id
    assert len(cloudflare_fake.records) == 1
    assert cloudflare_fake.count(POST) == 1
    assert cloudflare_fake.count(PATCH) == 0


async def test_upsert_with_a_new_ip_patches_the_record(
    make: Factory, cloudflare_fake: CloudflareFake
) -> None:
    dns = make()
    first = await dns.upsert(ALICE, "203.0.113.7")
    moved = await dns.upsert(ALICE, "198.51.100.9")
    assert moved.record_id == first.record_id and moved.content == "198.51.100.9"
    [stored] = cloudflare_fake.records.values()
    assert stored["content"] == "198.51.100.9" and stored["comment"] == MARKER
    assert cloudflare_fake.count(PATCH) == 1


async def test_upsert_repairs_a_record_changed_by_hand(
    make: Factory, cloudflare_fake: CloudflareFake
) -> None:
    seeded = cloudflare_fake.add_record(ALICE, "203.0.113.7", comment=MARKER, ttl=300)
    assert seeded["proxied"] is False
    record = await make().upsert(ALICE, "203.0.113.7")
    stored = cloudflare_fake.records[seeded["id"]]
    assert stored["proxied"] is True and stored["ttl"] == 1
    assert record.record_id == seeded["id"]
    assert cloudflare_fake.count(POST) == 0


@pytest.mark.parametrize("code", [81057, 81058])
async def test_already_exists_on_create_is_success(
    make: Factory, cloudflare_fake: CloudflareFake, code: int
) -> None:
    # A concurrent writer stored it: the create is done, and the answer says it exists.
    cloudflare_fake.inject(POST, 400, code, "A record with the same settings", after_effect=True)
    record = await make().upsert(ALICE, "203.0.113.7")
    [stored] = cloudflare_fake.records.values()
    assert record.record_id == stored["id"] and record.content == "203.0.113.7"
    assert cloudflare_fake.count(POST) == 1
    assert cloudflare_fake.count(LIST) == 2  # listed again instead of creating again


async def test_already_exists_that_never_shows_up_gives_up(
    make: Factory, cloudflare_fake: CloudflareFake
) -> None:
    cloudflare_fake.inject(POST, 400, 81058, times=10)
    with pytest.raises(DnsError, match="did not settle") as info:
        await make().upsert(ALICE, "203.0.113.7")
    assert info.value.upstream_code == 81058
    assert cloudflare_fake.count(POST) == cloudflare.UPSERT_ROUNDS


async def test_create_that_times_out_after_storing_leaves_one_record(
    make: Factory, cloudflare_fake: CloudflareFake, sleeps: Sleeps
) -> None:
    cloudflare_fake.delay(POST, 30.0, after_effect=True)  # stored, answer held back
    record = await make(timeout=0.5).upsert(ALICE, "203.0.113.7")
    [stored] = cloudflare_fake.records.values()
    assert record.record_id == stored["id"]
    assert cloudflare_fake.count(POST) == 1  # neither the SDK nor we posted again
    assert sleeps == [1.0]  # back-off before looking again


async def test_create_answered_5xx_after_storing_leaves_one_record(
    make: Factory, cloudflare_fake: CloudflareFake
) -> None:
    cloudflare_fake.inject(POST, 502, 10013, "Bad gateway", after_effect=True)
    record = await make().upsert(ALICE, "203.0.113.7")
    assert [r["id"] for r in cloudflare_fake.records.values()] == [record.record_id]
    assert cloudflare_fake.count(POST) == 1


async def test_create_5xx_before_storing_is_created_on_the_next_round(
    make: Factory, cloudflare_fake: CloudflareFake
) -> None:
    cloudflare_fake.inject(POST, 500, 10001, "Internal error")
    await make().upsert(ALICE, "203.0.113.7")
    assert len(ours(cloudflare_fake, ALICE)) == 1
    assert cloudflare_fake.count(POST) == 2


async def test_duplicates_of_our_name_are_removed(
    make: Factory, cloudflare_fake: CloudflareFake
) -> None:
    old = cloudflare_fake.add_record(ALICE, "203.0.113.7", comment=MARKER, proxied=True)
    new = cloudflare_fake.add_record(ALICE, "198.51.100.9", comment=MARKER, proxied=True)
    txt = cloudflare_fake.add_record(ALICE, "hello", "TXT")  # not ours: stays
    record = await make().upsert(ALICE, "198.51.100.9")
    assert record.record_id == new["id"]
    assert set(cloudflare_fake.records) == {new["id"], txt["id"]}
    assert old["id"] not in cloudflare_fake.records
    assert cloudflare_fake.count(PATCH) == 0


async def test_a_record_without_our_marker_is_a_conflict_and_untouched(
    make: Factory, cloudflare_fake: CloudflareFake
) -> None:
    theirs = cloudflare_fake.add_record(ALICE, "192.0.2.1", proxied=True)
    before = dict(theirs)
    with pytest.raises(DnsError, match="without our marker") as info:
        await make().upsert(ALICE, "203.0.113.7")
    assert info.value.upstream_status == 409
    assert cloudflare_fake.records == {theirs["id"]: before}
    assert cloudflare_fake.count(POST) == 0


async def test_another_clusters_record_is_not_ours(
    make: Factory, cloudflare_fake: CloudflareFake
) -> None:
    cloudflare_fake.add_record(ALICE, "192.0.2.1", comment="managed-by=clawfleet cluster=dev")
    with pytest.raises(DnsError, match="without our marker"):
        await make().upsert(ALICE, "203.0.113.7")


@pytest.mark.parametrize(
    ("name", "ip"),
    [
        (BASE, "203.0.113.7"),  # the apex of BASE_DOMAIN
        ("example.com", "203.0.113.7"),  # the zone apex
        ("alice.example.org", "203.0.113.7"),  # outside
        (ALICE, "not-an-ip"),
        (ALICE, "2001:db8::1"),  # A records only
    ],
)
async def test_upsert_refuses_bad_names_and_ips(
    make: Factory, cloudflare_fake: CloudflareFake, name: str, ip: str
) -> None:
    with pytest.raises(DnsError, match="refusing"):
        await make().upsert(name, ip)
    assert cloudflare_fake.calls == []


async def test_upsert_without_edit_rights_is_a_clear_error(
    make: Factory, cloudflare_fake: CloudflareFake
) -> None:
    cloudflare_fake.scopes = {"zone:read", "dns:read"}
    with pytest.raises(DnsError) as info:
        await make().upsert(ALICE, "203.0.113.7")
    assert info.value.message.startswith("CLOUDFLARE_API_TOKEN lacks Zone:DNS:Edit on ")
    assert info.value.message.count("CLOUDFLARE_API_TOKEN") == 1
    assert cloudflare_fake.count(POST) == 1  # a 403 is not retried


# -- delete -------------------------------------------------------------------------------


async def test_delete_removes_ours_and_keeps_the_rest(
    make: Factory, cloudflare_fake: CloudflareFake
) -> None:
    dns = make()
    await dns.upsert(ALICE, "203.0.113.7")
    txt = cloudflare_fake.add_record(ALICE, "hello", "TXT", comment=MARKER)  # not an A
    await dns.delete(ALICE)
    assert list(cloudflare_fake.records) == [txt["id"]]
    await dns.delete(ALICE)  # nothing of ours left: success, no delete sent
    assert cloudflare_fake.count(DELETE) == 1


async def test_delete_of_a_vanished_record_is_success(
    make: Factory, cloudflare_fake: CloudflareFake
) -> None:
    cloudflare_fake.add_record(ALICE, "203.0.113.7", comment=MARKER, proxied=True)
    # Someone deletes it between our list and our delete: the answer is 81044.
    cloudflare_fake.inject(DELETE, 404, 81044, "Record does not exist.", after_effect=True)
    await make().delete(ALICE)
    assert cloudflare_fake.records == {}


async def test_delete_timeout_is_retried(
    make: Factory, cloudflare_fake: CloudflareFake, sleeps: Sleeps
) -> None:
    cloudflare_fake.add_record(ALICE, "203.0.113.7", comment=MARKER, proxied=True)
    cloudflare_fake.delay(DELETE, 30.0, after_effect=True)
    await make(timeout=0.5).delete(ALICE)
    assert cloudflare_fake.records == {}
    assert cloudflare_fake.count(DELETE) == 2  # the retry met 81044: success
    assert sleeps == [1.0]


@pytest.mark.parametrize("name", [BASE, "example.com", "alice.example.org"])
async def test_delete_refuses_the_apex_and_names_outside(
    make: Factory, cloudflare_fake: CloudflareFake, name: str
) -> None:
    cloudflare_fake.add_record(name, "203.0.113.7", comment=MARKER)
    with pytest.raises(DnsError, match="refusing"):
        await make().delete(name)
    assert len(cloudflare_fake.records) == 1
    assert cloudflare_fake.calls == []


# -- rate limit ---------------------------------------------------------------------------


async def test_429_waits_retry_after_then_succeeds(
    make: Factory, cloudflare_fake: CloudflareFake, sleeps: Sleeps
) -> None:
    cloudflare_fake.inject(POST, 429, 971, times=2, retry_after=7)
    await make().upsert(ALICE, "203.0.113.7")
    assert sleeps == [7.0, 7.0]
    assert len(cloudflare_fake.records) == 1
    assert cloudflare_fake.count(POST) == 3


async def test_429_without_retry_after_backs_off_exponentially(
    make: Factory, cloudflare_fake: CloudflareFake, sleeps: Sleeps
) -> None:
    cloudflare_fake.inject(LIST, 429, 971, times=3)
    assert await make().list_ours() == []
    assert sleeps == [1.0, 2.0, 4.0]


async def test_retries_are_jittered_down_to_half_the_back_off(
    make: Factory, cloudflare_fake: CloudflareFake, sleeps: Sleeps
) -> None:
    cloudflare_fake.inject(LIST, 503, 10000, times=3)
    assert await make(rand=lambda: 0.0).list_ours() == []
    assert sleeps == [0.5, 1.0, 2.0]


async def test_a_lasting_rate_limit_gives_up_after_max_attempts(
    make: Factory, cloudflare_fake: CloudflareFake, sleeps: Sleeps
) -> None:
    cloudflare_fake.rate_limit = 0  # every request is over the limit
    cloudflare_fake.rate_window = 2.0  # Retry-After: 2 (a 5-minute one is past the deadline)
    with pytest.raises(DnsError) as info:
        await make().list_ours()
    assert info.value.upstream_status == 429 and info.value.upstream_code == 971
    assert len(cloudflare_fake.calls) == MAX_ATTEMPTS
    assert sleeps == [2.0] * (MAX_ATTEMPTS - 1)  # the fake's Retry-After, honoured


async def test_a_retry_after_beyond_the_deadline_fails_at_once(
    make: Factory, cloudflare_fake: CloudflareFake, sleeps: Sleeps
) -> None:
    cloudflare_fake.inject(LIST, 429, 971, retry_after=100)
    with pytest.raises(DnsError) as info:
        await make(deadline=30.0).list_ours()
    assert info.value.retry_after == 100.0
    assert sleeps == []


async def test_the_fake_enforces_its_rate_limit(cloudflare_fake: CloudflareFake) -> None:
    cloudflare_fake.rate_limit = 2
    client = AsyncCloudflare(api_token=cloudflare_fake.token, base_url=cloudflare_fake.url)
    client = client.with_options(max_retries=0)
    try:
        await client.zones.get(zone_id=cloudflare_fake.zone_id)
        await client.zones.get(zone_id=cloudflare_fake.zone_id)
        with pytest.raises(Exception) as info:
            await client.zones.get(zone_id=cloudflare_fake.zone_id)
        assert getattr(info.value, "status_code", None) == 429
    finally:
        await client.close()


# -- list_ours ----------------------------------------------------------------------------


async def test_list_ours_keeps_only_our_a_records_under_base_domain(
    make: Factory, cloudflare_fake: CloudflareFake
) -> None:
    fake = cloudflare_fake
    a = fake.add_record(ALICE, "203.0.113.7", comment=MARKER, proxied=True)
    b = fake.add_record("bob.u.example.com", "203.0.113.8", comment=MARKER)
    fake.add_record("carol.u.example.com", "203.0.113.9")  # no marker
    fake.add_record("dave.u.example.com", "203.0.113.9", comment="managed-by=clawfleet cluster=dev")
    fake.add_record("erin.u.example.com", "2001:db8::1", "AAAA", comment=MARKER)
    fake.add_record(BASE, "203.0.113.1", comment=MARKER)  # BASE_DOMAIN's apex
    fake.add_record("example.com", "203.0.113.1", comment=MARKER)  # the zone apex
    fake.add_record("frank.example.com", "203.0.113.1", comment=MARKER)  # outside BASE
    fake.add_record("xu.example.com", "203.0.113.1", comment=MARKER)  # suffix, not a child
    records = await make().list_ours()
    assert records == [
        DnsRecord(ALICE, "203.0.113.7", a["id"], proxied=True, ours=True),
        DnsRecord("bob.u.example.com", "203.0.113.8", b["id"], proxied=False, ours=True),
    ]


async def test_list_ours_follows_pagination(
    make: Factory, cloudflare_fake: CloudflareFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cloudflare, "PAGE_SIZE", 5)
    for i in range(12):
        cloudflare_fake.add_record(f"u{i}.u.example.com", f"203.0.113.{i + 1}", comment=MARKER)
    records = await make().list_ours()
    assert len(records) == 12
    assert cloudflare_fake.count(LIST) == 3


async def test_list_ours_is_bounded_in_pages(
    make: Factory, cloudflare_fake: CloudflareFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cloudflare, "PAGE_SIZE", 5)
    monkeypatch.setattr(cloudflare, "MAX_PAGES", 2)
    for i in range(12):
        cloudflare_fake.add_record(f"u{i}.u.example.com", f"203.0.113.{i + 1}", comment=MARKER)
    assert len(await make().list_ours()) == 10
    assert cloudflare_fake.count(LIST) == 2


# -- the token stays secret -----------------------------------------------------------------


async def test_the_token_is_never_logged(
    make: Factory, cloudflare_fake: CloudflareFake, caplog: pytest.LogCaptureFixture
) -> None:
    dns = make()
    cloudflare_fake.inject(POST, 429, 971, retry_after=1)
    cloudflare_fake.inject(PATCH, 500, 10001)
    with caplog.at_level(logging.DEBUG):
        await dns.verify()
        await dns.upsert(ALICE, "203.0.113.7")
        await dns.upsert(ALICE, "198.51.100.9")
        await dns.delete(ALICE)
    assert "Sending HTTP Request" in caplog.text  # the SDK's debug log was captured
    assert cloudflare_fake.token not in caplog.text
    assert cloudflare_fake.token not in repr(dns)


# -- reconciliation against the fake ------------------------------------------------------


async def test_reconcile_repairs_drift_both_ways(
    make: Factory, cloudflare_fake: CloudflareFake
) -> None:
    fake = cloudflare_fake
    wrong = fake.add_record(ALICE, "192.0.2.1", comment=MARKER, proxied=True)
    fake.add_record("gone.u.example.com", "192.0.2.2", comment=MARKER, proxied=True)
    foreign = fake.add_record("hand.u.example.com", "192.0.2.3")
    apex = fake.add_record(BASE, "192.0.2.4", comment=MARKER)
    desired = {ALICE: "203.0.113.7", "bob.u.example.com": "203.0.113.8"}
    report = await reconcile_dns(make(), desired, base_domain=BASE)
    assert report.plan == DnsPlan(upsert=desired, delete=["gone.u.example.com"])
    assert report.failed == {} and report.deferred == 0
    names = {(r["name"], r["content"]) for r in ours(fake)}
    assert names == {
        (ALICE, "203.0.113.7"),
        ("bob.u.example.com", "203.0.113.8"),
        (BASE, "192.0.2.4"),
    }
    assert fake.records[wrong["id"]]["content"] == "203.0.113.7"
    assert foreign["id"] in fake.records and apex["id"] in fake.records
    # A second round finds nothing to do.
    again = await reconcile_dns(make(), desired, base_domain=BASE)
    assert again.plan.empty


async def test_reconcile_caps_changes_and_reports_failures(
    make: Factory, cloudflare_fake: CloudflareFake
) -> None:
    cloudflare_fake.add_record("bob.u.example.com", "192.0.2.3")  # not ours: a conflict
    desired = {
        ALICE: "203.0.113.7",
        "bob.u.example.com": "203.0.113.8",
        "c.u.example.com": "203.0.113.9",
    }
    report = await reconcile_dns(make(), desired, base_domain=BASE, max_changes=2)
    assert report.upserted == [ALICE]
    assert list(report.failed) == ["bob.u.example.com"]
    assert report.deferred == 1
    assert [r["name"] for r in ours(cloudflare_fake)] == [ALICE]


# -- pure parts ---------------------------------------------------------------------------


def rec(name: str, ip: str, *, ours: bool = True, proxied: bool = True, rid: str = "") -> DnsRecord:
    return DnsRecord(name, ip, rid or f"id-{name}-{ip}", proxied=proxied, ours=ours)


A, B, C = "a.u.example.com", "b.u.example.com", "c.u.example.com"


@pytest.mark.parametrize(
    ("desired", "actual", "expected"),
    [
        pytest.param({}, [], DnsPlan({}, []), id="nothing"),
        pytest.param({A: "1.1.1.1"}, [rec(A, "1.1.1.1")], DnsPlan({}, []), id="in-sync"),
        pytest.param({A: "1.1.1.1"}, [], DnsPlan({A: "1.1.1.1"}, []), id="missing"),
        pytest.param(
            {A: "1.1.1.1"}, [rec(A, "2.2.2.2")], DnsPlan({A: "1.1.1.1"}, []), id="wrong-ip"
        ),
        pytest.param(
            {A: "1.1.1.1"},
            [rec(A, "1.1.1.1", proxied=False)],
            DnsPlan({A: "1.1.1.1"}, []),
            id="not-proxied",
        ),
        pytest.param(
            {A: "1.1.1.1"},
            [rec(A, "1.1.1.1", rid="x"), rec(A, "1.1.1.1", rid="y")],
            DnsPlan({A: "1.1.1.1"}, []),
            id="duplicates-of-a-desired-name",
        ),
        pytest.param(
            {}, [rec(B, "1.1.1.1"), rec(B, "2.2.2.2")], DnsPlan({}, [B]), id="duplicates-extra"
        ),
        pytest.param({}, [rec(B, "1.1.1.1")], DnsPlan({}, [B]), id="extra-of-ours"),
        pytest.param({}, [rec(B, "1.1.1.1", ours=False)], DnsPlan({}, []), id="not-ours-kept"),
        pytest.param(
            {A: "1.1.1.1"},
            [rec(A, "2.2.2.2", ours=False)],
            DnsPlan({A: "1.1.1.1"}, []),
            id="not-ours-at-a-desired-name",  # upsert then reports the conflict
        ),
        pytest.param({}, [rec("u.example.com", "1.1.1.1")], DnsPlan({}, []), id="apex-kept"),
        pytest.param({}, [rec("example.com", "1.1.1.1")], DnsPlan({}, []), id="zone-apex-kept"),
        pytest.param({}, [rec("x.example.com", "1.1.1.1")], DnsPlan({}, []), id="outside-kept"),
        pytest.param(
            {"A.U.Example.com.": "1.1.1.1"}, [rec(A, "1.1.1.1")], DnsPlan({}, []), id="case-dot"
        ),
        pytest.param(
            {C: "3.3.3.3", A: "1.1.1.1"},
            [rec(B, "2.2.2.2"), rec(A, "1.1.1.1"), rec(C, "9.9.9.9")],
            DnsPlan({C: "3.3.3.3"}, [B]),
            id="mixed",
        ),
    ],
)
def test_plan_dns(desired: dict[str, str], actual: list[DnsRecord], expected: DnsPlan) -> None:
    assert plan_dns(desired, actual, base_domain=BASE) == expected


def test_plan_dns_refuses_desired_names_outside_base_domain() -> None:
    with pytest.raises(ValueError, match="not under"):
        plan_dns({BASE: "1.1.1.1"}, [], base_domain=BASE)


def test_plan_dns_without_base_domain_still_spares_records_not_ours() -> None:
    plan = plan_dns({}, [rec(A, "1.1.1.1"), rec(B, "1.1.1.1", ours=False)])
    assert plan == DnsPlan({}, [A])


@pytest.mark.parametrize(
    ("status", "attempt", "retry_after", "expected"),
    [
        (429, 1, 7.0, 7.0),  # the server's word
        (429, 1, 0.0, 0.0),
        (429, 1, 900.0, 300.0),  # capped at the 5-minute window
        (429, 1, -3.0, 0.0),
        (429, 1, None, 1.0),  # no Retry-After: back-off
        (429, 3, None, 4.0),
        (0, 1, None, 1.0),  # no answer
        (0, 2, None, 2.0),
        (500, 1, None, 1.0),
        (502, 2, None, 2.0),
        (503, 4, None, 8.0),
        (504, 1, None, 1.0),
        (522, 1, None, 1.0),  # Cloudflare edge error
        (503, 1, 5.0, 1.0),  # Retry-After only matters for 429
        (400, 1, None, None),  # our request is wrong
        (401, 1, None, None),
        (403, 1, None, None),  # rights: retrying will not help
        (404, 1, None, None),
        (409, 1, None, None),
        (429, MAX_ATTEMPTS, 1.0, None),  # out of attempts
        (500, MAX_ATTEMPTS, None, None),
        (500, 0, None, None),
    ],
)
def test_retry_delay(
    status: int, attempt: int, retry_after: float | None, expected: float | None
) -> None:
    assert retry_delay(status, attempt, retry_after) == expected


@pytest.mark.parametrize(
    ("status", "attempt", "rand", "expected"),
    [
        (503, 1, 0.0, 0.5),  # jitter: never below half the back-off
        (503, 3, 0.5, 3.0),
        (0, 4, 0.0, 4.0),
        (429, 2, 0.0, 1.0),  # a 429 without Retry-After is jittered too
        (503, MAX_ATTEMPTS, 0.0, None),
    ],
)
def test_retry_delay_jitter(status: int, attempt: int, rand: float, expected: float | None) -> None:
    assert retry_delay(status, attempt, None, rand) == expected


def test_retry_delay_is_capped() -> None:
    delays = [retry_delay(500, attempt, None) for attempt in range(1, MAX_ATTEMPTS)]
    assert all(d is not None and d <= 30.0 for d in delays)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        ("1.5", 1.5),
        ("-4", 0.0),
        ("soon", None),
        ("Thu, 01 Jan 1970 00:01:40 GMT", 60.0),  # 100 s after the epoch, "now" is 40
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=40.0) == expected


@pytest.mark.parametrize(
    ("sub", "base", "expected"),
    [
        ("alice", "example.com", "alice.example.com"),
        ("Alice", "U.Example.COM.", "alice.u.example.com"),
        ("a-1", "example.com", "a-1.example.com"),
    ],
)
def test_fqdn(sub: str, base: str, expected: str) -> None:
    assert fqdn(sub, base) == expected


@pytest.mark.parametrize(
    ("sub", "base"),
    [
        ("a.b", "example.com"),
        ("", "example.com"),
        ("-a", "example.com"),
        ("a", ""),
        ("x" * 64, "e.com"),
        ("*", "e.com"),
    ],
)
def test_fqdn_refuses(sub: str, base: str) -> None:
    with pytest.raises(ValueError):
        fqdn(sub, base)


async def test_rate_limiter_spends_the_burst_then_paces() -> None:
    now = [0.0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    limiter = RateLimiter(budget=2, window=1.0, burst=2, sleep=sleep, clock=lambda: now[0])
    for _ in range(4):
        await limiter.acquire()
    assert waits == [0.5, 1.0]  # 2 per second: the 3rd waits half a second, the 4th one
    now[0] = 10.0  # long idle: the bucket is full again, capped at the burst
    waits.clear()
    await limiter.acquire()
    await limiter.acquire()
    assert waits == []


async def test_no_dns_does_nothing() -> None:
    dns = NoDns()
    assert isinstance(dns, DnsProvider)
    assert dns.name == "none"
    await dns.verify()
    record = await dns.upsert(ALICE, "203.0.113.7")
    assert record.record_id is None and record.ours is False
    await dns.delete(ALICE)
    assert await dns.list_ours() == []
    report = await reconcile_dns(dns, {ALICE: "203.0.113.7"}, base_domain=BASE)
    # With nothing ever stored, every round plans the upsert again and it is a no-op.
    assert report.upserted == [ALICE] and report.failed == {}
    await dns.close()


async def test_cloudflare_dns_is_a_dns_provider() -> None:
    dns = CloudflareDns(CloudflareApi("t", "z"), BASE, "prod")
    assert isinstance(dns, DnsProvider)
    assert dns.name == "cloudflare"
    await dns.close()


async def test_the_fake_refuses_an_identical_record_like_cloudflare(
    cloudflare_fake: CloudflareFake,
) -> None:
    client = AsyncCloudflare(api_token=cloudflare_fake.token, base_url=cloudflare_fake.url)
    client = client.with_options(max_retries=0)
    try:
        kwargs: dict[str, Any] = {
            "zone_id": cloudflare_fake.zone_id,
            "name": ALICE,
            "type": "A",
            "content": "203.0.113.7",
            "ttl": 1,
        }
        await client.dns.records.create(**kwargs)
        with pytest.raises(BadRequestError) as info:
            await client.dns.records.create(**kwargs)
        assert info.value.errors[0].code == 81058
        assert len(cloudflare_fake.records) == 1
    finally:
        await client.close()
