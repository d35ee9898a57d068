"""The Hetzner provider driving the real hcloud client against the local fake API."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from control.capacity.providers import hetzner_calls
from control.capacity.providers.base import CreateRequest, ErrorKind, ProviderError, ServerType
from control.capacity.providers.hetzner import HetznerProvider
from control.capacity.providers.hetzner_errors import classify
from control.capacity.providers.hetzner_ratelimit import RateBudget
from tests.fakes.hetzner import HetznerFake, hetzner_fake_fixture  # noqa: F401
from tests.ports import free_port

Factory = Callable[..., HetznerProvider]


@pytest.fixture
async def make(hetzner_fake: HetznerFake) -> AsyncIterator[Factory]:
    made: list[HetznerProvider] = []

    def factory(
        types: tuple[str, ...] = ("cpx22",),
        locations: tuple[str, ...] = ("nbg1",),
        **kwargs: Any,
    ) -> HetznerProvider:
        kwargs.setdefault("token", hetzner_fake.token)
        kwargs.setdefault("timeout", 5.0)
        provider = HetznerProvider(
            endpoint=hetzner_fake.url, server_types=types, locations=locations, **kwargs
        )
        made.append(provider)
        return provider

    yield factory
    for provider in made:
        await provider.close()


def req(
    name: str = "cf-w-0001",
    server_id: str = "w0001",
    server_type: str = "cpx22",
    location: str = "nbg1",
    labels: dict[str, str] | None = None,
) -> CreateRequest:
    return CreateRequest(
        server_id=server_id,
        name=name,
        server_type=server_type,
        location=location,
        user_data="#cloud-config\nruncmd: [[touch, /tmp/ok]]\n",
        labels={"clawfleet": "worker", "server-id": server_id} if labels is None else labels,
    )


async def expect_error(call: Any) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await call
    return info.value


# -- validate ------------------------------------------------------------------------


async def test_validate_loads_pairs_and_server_types(make: Factory) -> None:
    provider = make(types=("cpx22", "cpx32"), locations=("nbg1", "ash"))
    await provider.validate()
    assert provider.pairs() == [
        ("cpx22", "nbg1"),
        ("cpx22", "ash"),
        ("cpx32", "nbg1"),
        ("cpx32", "ash"),
    ]
    cpx22 = provider.server_type("cpx22")
    assert cpx22 == ServerType(name="cpx22", cpus=2, memory_mb=4096, disk_gb=80, hourly_price=0.012)
    assert provider.server_type("cpx32").memory_mb == 8192
    assert provider.name == "hetzner"


async def test_deprecated_type_is_an_error_naming_what_is_available(make: Factory) -> None:
    provider = make(types=("cpx22", "cx22"), locations=("nbg1",))
    err = await expect_error(provider.validate())
    assert err.kind == "invalid"
    assert err.message.startswith(
        "HETZNER_SERVER_TYPE: cx22 is deprecated in nbg1 and can no longer be ordered"
    )
    assert err.message.endswith("available in nbg1: cpx22, cpx32, cx23")
    assert provider.pairs() == []


async def test_unknown_type_and_unknown_location_are_errors(make: Factory) -> None:
    err = await expect_error(make(types=("cx99",)).validate())
    assert err.kind == "invalid"
    assert "cx99 is not a Hetzner server type" in err.message
    assert "available in nbg1: cpx22, cpx32, cx23" in err.message

    err = await expect_error(make(locations=("nbg1", "mars1")).validate())
    assert err.kind == "invalid"
    assert "HETZNER_LOCATION: mars1 is not a Hetzner location" in err.message
    assert "ash, fsn1, hel1, hil, nbg1" in err.message


async def test_pair_not_offered_is_skipped_with_a_warning(
    make: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    provider = make(types=("cx23", "cpx22"), locations=("nbg1", "ash"))
    with caplog.at_level(logging.WARNING, logger="control.capacity.providers.hetzner"):
        await provider.validate()
    assert provider.pairs() == [("cx23", "nbg1"), ("cpx22", "nbg1"), ("cpx22", "ash")]
    assert "cx23 is not offered in ash" in caplog.text


async def test_no_pair_left_is_an_error(make: Factory) -> None:
    err = await expect_error(make(types=("cx23",), locations=("ash", "hil")).validate())
    assert err.kind == "invalid"
    assert "available in ash: cpx22, cpx32" in err.message
    assert "available in hil: cpx22, cpx32" in err.message


async def test_bad_token_is_a_clear_error_without_the_token(make: Factory) -> None:
    token = "wrong-token-" + "z" * 40
    err = await expect_error(make(token=token).validate())
    assert (err.kind, err.code, err.upstream_status) == ("invalid", "unauthorized", 401)
    assert "HETZNER_API_TOKEN" in err.message
    assert token not in str(err)
    assert err.correlation_id


async def test_unknown_ssh_key_is_an_error(make: Factory) -> None:
    await make(ssh_keys=("ops",)).validate()
    err = await expect_error(make(ssh_keys=("ops", "nobody")).validate())
    assert err.kind == "invalid"
    assert "HETZNER_SSH_KEYS" in err.message and "nobody" in err.message


# -- create ---------------------------------------------------------------------------


async def test_create_sends_what_was_asked(make: Factory, hetzner_fake: HetznerFake) -> None:
    provider = make(ssh_keys=("ops",), image="debian-12")
    await provider.validate()
    request = req(server_type="cpx22", location="nbg1")
    server = await provider.create(request)

    [sent] = hetzner_fake.create_requests
    assert sent["name"] == request.name
    assert sent["labels"] == request.labels
    assert sent["user_data"] == request.user_data
    assert sent["image"] == "debian-12"
    assert sent["server_type"] == "cpx22"
    assert sent["location"] == "nbg1"
    assert sent["ssh_keys"] == ["ops"]
    stored = hetzner_fake.servers[int(server.provider_id)]
    assert server.name == request.name
    assert server.labels == request.labels
    assert server.status == "initializing"  # create does not wait for the boot
    assert server.public_ip == stored["public_net"]["ipv4"]["ip"]
    assert (server.server_type, server.location) == ("cpx22", "nbg1")
    assert server.created_at is not None and abs(server.created_at - time.time()) < 3600
    assert hetzner_fake.count("GET /actions/{id}") == 0


async def test_create_is_idempotent_by_name(make: Factory, hetzner_fake: HetznerFake) -> None:
    provider = make()
    first = await provider.create(req())
    again = await provider.create(req())
    assert again.provider_id == first.provider_id
    assert len(hetzner_fake.servers) == 1
    assert hetzner_fake.count("POST /servers") == 1


async def test_create_timing_out_after_the_store_adopts_instead_of_duplicating(
    make: Factory, hetzner_fake: HetznerFake
) -> None:
    provider = make(timeout=1.0)
    hetzner_fake.timeout_after_store(seconds=5)
    server = await provider.create(req())  # the POST times out, the look-up adopts it
    assert list(hetzner_fake.servers) == [int(server.provider_id)]
    retried = await provider.create(req())  # and the autoscaler's retry adopts it too
    assert retried.provider_id == server.provider_id
    assert len(hetzner_fake.servers) == 1
    assert hetzner_fake.count("POST /servers") == 1


async def test_uniqueness_error_on_create_adopts(
    make: Factory, hetzner_fake: HetznerFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = make()
    existing = hetzner_fake.add_server("cf-w-0001", req().labels)
    lookups: list[str] = []
    real_find = provider._find_by_name

    def find_missing_once(name: str) -> Any:
        lookups.append(name)  # the first look-up misses, as if the server appeared after it
        return None if len(lookups) == 1 else real_find(name)

    monkeypatch.setattr(provider, "_find_by_name", find_missing_once)
    server = await provider.create(req())
    assert server.provider_id == str(existing["id"])
    assert len(lookups) == 2
    assert [c.status for c in hetzner_fake.calls if c.endpoint == "POST /servers"] == [409]
    assert len(hetzner_fake.servers) == 1


async def test_create_does_not_adopt_a_server_with_other_labels(
    make: Factory, hetzner_fake: HetznerFake
) -> None:
    hetzner_fake.add_server("cf-w-0001", {"clawfleet": "worker", "server-id": "someone-else"})
    err = await expect_error(make().create(req()))
    assert (err.kind, err.code) == ("invalid", "uniqueness_error")
    assert "server-id" in err.message
    assert hetzner_fake.count("POST /servers") == 0


async def test_immediately_failed_action_is_an_error_and_the_server_is_removed(
    make: Factory, hetzner_fake: HetznerFake
) -> None:
    hetzner_fake.fail_action(code="action_failed", message="no host available")
    err = await expect_error(make().create(req()))
    assert (err.kind, err.code) == ("unavailable", "action_failed")
    assert "no host available" in err.message
    post = next(c for c in hetzner_fake.calls if c.endpoint == "POST /servers")
    assert err.correlation_id == post.correlation_id
    assert hetzner_fake.servers == {}  # a retry under the same name will not adopt a wreck
    assert hetzner_fake.count("DELETE /servers/{id}") == 1


async def test_invalid_requests_fail_before_any_call(
    make: Factory, hetzner_fake: HetznerFake
) -> None:
    provider = make()
    err = await expect_error(provider.create(req(labels={"user": "x" * 64})))
    assert err.kind == "invalid" and "user" in err.message
    err = await expect_error(provider.create(req(labels={"bad key!": "x"})))
    assert err.kind == "invalid"
    err = await expect_error(provider.create(req(name="not a hostname")))
    assert err.kind == "invalid"
    assert hetzner_fake.calls == []
    await provider.validate()
    calls = len(hetzner_fake.calls)
    err = await expect_error(provider.create(req(server_type="cx23", location="ash")))
    assert err.kind == "invalid" and "cpx22@nbg1" in err.message
    assert len(hetzner_fake.calls) == calls


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (412, "resource_unavailable", "unavailable"),
        (422, "placement_error", "unavailable"),
        (403, "resource_limit_exceeded", "limit"),
        (429, "rate_limit_exceeded", "rate_limited"),
        (500, "server_error", "transient"),
        (503, "unavailable", "transient"),
        (422, "invalid_input", "invalid"),
    ],
)
async def test_injected_create_errors_map_to_kinds(
    make: Factory, hetzner_fake: HetznerFake, status: int, code: str, kind: ErrorKind
) -> None:
    hetzner_fake.inject("POST /servers", status, code, "it went wrong")
    err = await expect_error(make().create(req()))
    post = next(c for c in hetzner_fake.calls if c.endpoint == "POST /servers")
    assert (err.kind, err.code, err.upstream_status) == (kind, code, status)
    assert "it went wrong" in err.message
    assert err.correlation_id == post.correlation_id
    assert err.correlation_id in str(err)
    assert hetzner_fake.servers == {}
    assert hetzner_fake.count("POST /servers") == 1  # hcloud's own retries are off


async def test_a_429_waits_for_one_request_not_for_a_full_bucket(
    make: Factory, hetzner_fake: HetznerFake
) -> None:
    """RateLimit-Reset says when the bucket is FULL (an hour away at 3600/hour); one
    request comes back after a second. Before the fix retry_after was ~3600 s."""
    provider = make()
    hetzner_fake.inject("GET /servers", 429, "rate_limit_exceeded")
    err = await expect_error(provider.list({"clawfleet": "worker"}))
    assert err.kind == "rate_limited"
    # One request's refill (1 s) plus jitter; RateLimit-Reset is whole seconds, so the
    # wait may round a hair under 1 s.
    assert err.retry_after is not None and 0.99 <= err.retry_after <= 1.5
    assert provider.rate_limit_remaining == 0
    assert provider.rate_limit_reset == pytest.approx(time.time() + 3600, abs=10)


async def test_calls_after_a_429_wait_for_the_bucket_instead_of_hitting_it(
    make: Factory, hetzner_fake: HetznerFake
) -> None:
    now = time.time()  # the budget's clock: it moves only when the budget sleeps
    waits: list[tuple[float, int]] = []  # (seconds asked for, calls the fake had seen)

    async def sleep(seconds: float) -> None:
        nonlocal now
        waits.append((seconds, len(hetzner_fake.calls)))
        now += seconds
        hetzner_fake.rate_limit_remaining = 1  # the one request the wait was for is back

    provider = make(budget=RateBudget(clock=lambda: now, sleep=sleep))
    hetzner_fake.inject("GET /servers", 429, "rate_limit_exceeded")
    err = await expect_error(provider.list({"clawfleet": "worker"}))
    assert err.retry_after is not None and 0.99 <= err.retry_after <= 1.5  # one request
    assert await provider.list({"clawfleet": "worker"}) == []
    # One wait, for exactly the 429's retry_after (one request's refill, not an hour),
    # asked for before the second call went out: nothing was sent into the empty bucket.
    assert waits == [(pytest.approx(err.retry_after, abs=1e-6), 1)]
    assert [c.status for c in hetzner_fake.calls] == [429, 200]


async def test_rate_limit_headers_are_tracked(make: Factory, hetzner_fake: HetznerFake) -> None:
    provider = make()
    assert provider.rate_limit_remaining is None
    hetzner_fake.rate_limit_remaining = 1234
    await provider.validate()
    assert provider.rate_limit_limit == 3600
    assert provider.rate_limit_remaining == hetzner_fake.rate_limit_remaining < 1234
    assert provider.rate_limit_reset is not None and provider.rate_limit_reset > time.time()


async def test_timeout_and_connection_errors_are_transient(make: Factory) -> None:
    port = free_port()  # reserved, and nothing listens there
    provider = HetznerProvider("t", f"http://127.0.0.1:{port}/v1", ("cpx22",), ("nbg1",))
    try:
        err = await expect_error(provider.list({}))
        assert (err.kind, err.code) == ("transient", "connection_error")
    finally:
        await provider.close()


async def test_slow_answer_times_out(make: Factory, hetzner_fake: HetznerFake) -> None:
    hetzner_fake.delay("GET /servers", 5)
    err = await expect_error(make(timeout=1.0).list({}))
    assert (err.kind, err.code) == ("transient", "timeout")


# -- delete and list --------------------------------------------------------------------


async def test_delete_and_delete_of_a_missing_server(
    make: Factory, hetzner_fake: HetznerFake
) -> None:
    provider = make()
    server = await provider.create(req())
    await provider.delete(server.provider_id)
    assert hetzner_fake.servers == {}
    await provider.delete(server.provider_id)  # already gone: success
    statuses = [c.status for c in hetzner_fake.calls if c.endpoint == "DELETE /servers/{id}"]
    assert statuses == [200, 404]
    err = await expect_error(provider.delete("not-a-number"))
    assert err.kind == "invalid"
    hetzner_fake.inject("DELETE /servers/{id}", 503, "unavailable")
    err = await expect_error(provider.delete("12345"))
    assert err.kind == "transient"


async def test_list_by_labels_follows_pagination(make: Factory, hetzner_fake: HetznerFake) -> None:
    for i in range(60):
        hetzner_fake.add_server(f"cf-w-{i:04d}", {"clawfleet": "worker", "pool": "a"})
    for i in range(5):
        hetzner_fake.add_server(f"other-{i}", {"clawfleet": "worker", "pool": "b"})
    hetzner_fake.add_server("unlabelled")
    provider = make()
    provider.page_size = 25
    servers = await provider.list({"pool": "a", "clawfleet": "worker"})
    assert sorted(s.name for s in servers) == [f"cf-w-{i:04d}" for i in range(60)]
    assert len({s.provider_id for s in servers}) == 60
    pages = [c.query for c in hetzner_fake.calls if c.endpoint == "GET /servers"]
    assert [q["page"] for q in pages] == ["1", "2", "3"]
    assert {q["label_selector"] for q in pages} == {"clawfleet=worker,pool=a"}
    assert {q["per_page"] for q in pages} == {"25"}
    assert len(await provider.list({})) == 66


# -- the event loop stays free ----------------------------------------------------------


async def test_calls_do_not_block_the_event_loop(make: Factory, hetzner_fake: HetznerFake) -> None:
    hetzner_fake.delay("GET /server_types", 1.0)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        for _ in range(1000):  # bounded; cancelled when validate returns
            await asyncio.sleep(0.02)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        await make().validate()
    finally:
        task.cancel()
    assert ticks >= 10  # ~50 expected during the 1 s latency; 0 if the loop were blocked


async def test_closed_provider_refuses_calls(make: Factory) -> None:
    provider = make()
    await provider.close()
    await provider.close()  # idempotent
    err = await expect_error(provider.list({}))
    assert err.kind == "invalid"


# -- classify -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (412, "resource_unavailable", "unavailable"),
        (422, "placement_error", "unavailable"),
        (403, "resource_limit_exceeded", "limit"),
        (429, "rate_limit_exceeded", "rate_limited"),
        (429, "", "rate_limited"),
        (500, "server_error", "transient"),
        (502, "", "transient"),
        (503, "unavailable", "transient"),
        (504, "timeout", "transient"),
        (0, "timeout", "transient"),
        (0, "connection_error", "transient"),
        (409, "conflict", "transient"),
        (423, "locked", "transient"),
        (403, "maintenance", "transient"),
        (401, "unauthorized", "invalid"),
        (401, "token_readonly", "invalid"),
        (400, "invalid_input", "invalid"),
        (422, "invalid_input", "invalid"),
        (400, "json_error", "invalid"),
        (403, "forbidden", "invalid"),
        (409, "uniqueness_error", "invalid"),
        (412, "primary_ip_version_mismatch", "invalid"),  # a 412 that is our mistake
        (423, "protected", "invalid"),
        (404, "not_found", "not_found"),
        (404, "", "not_found"),
        (418, "something_new", "invalid"),
        (599, "something_new", "transient"),
    ],
)
def test_classify(status: int, code: str, kind: ErrorKind) -> None:
    assert classify(status, code) == kind


async def test_a_call_that_ends_as_its_caller_is_cancelled_still_cancels_it() -> None:
    """asyncio.wait_for on Python 3.11 returns the result when the call is done as the
    cancel arrives, so a cancelled autoscaler run went on as if not cancelled. Here the
    cancel reaches the loop just before the call's result (asked for from its thread)."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[str]] = []

    def fn() -> str:
        loop.call_soon_threadsafe(tasks[0].cancel)
        return "answered"

    with ThreadPoolExecutor(1) as executor:
        tasks.append(asyncio.create_task(hetzner_calls.call(RateBudget(), executor, 5, fn, "x")))
        with pytest.raises(asyncio.CancelledError):
            await tasks[0]
