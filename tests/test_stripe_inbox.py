"""The Stripe inbox end to end: signed deliveries through the real route and the real
`stripe` verifier, a real SQLite store, processing order, retries, restarts, and the
subscription re-fetch against the fake Stripe API. Nothing leaves 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient

from control.api.middleware import errors
from control.api.stripe_webhook import stripe_routes
from control.appkeys import INBOX
from control.billing.inbox import (
    BillingFact,
    StripeInbox,
    backoff,
    decode,
)
from control.db.store import Store
from tests import stripe_events as se
from tests.fakes.stripe_api import StripeFake, stripe_fake_fixture  # noqa: F401

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
# Stripe's example objects, in the shared/ folder laid beside the checkout (CI's too).
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "stripe"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any connection or name lookup beyond this host fails the test."""
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOOPBACK:
            raise AssertionError(f"test tried to reach {address!r}")
        real_connect(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and str(host) not in LOOPBACK:
            raise AssertionError(f"test tried to resolve {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(str(tmp_path / "clawfleet.db"))
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def inbox(store: Store) -> StripeInbox:
    return StripeInbox(store, se.WEBHOOK_SECRET)


@pytest_asyncio.fixture
async def client(inbox: StripeInbox, aiohttp_client: AiohttpClient) -> TestClient[Any, Any]:
    app = web.Application(middlewares=[errors])
    app[INBOX] = inbox
    app.add_routes(stripe_routes)
    return await aiohttp_client(app)


class Recorder:
    """An ApplyFn that records facts and fails while `failures` > 0."""

    def __init__(self, failures: int = 0, error: str = "placement unavailable") -> None:
        self.facts: list[BillingFact] = []
        self.failures = failures
        self.error = error

    async def __call__(self, fact: BillingFact) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError(self.error)
        self.facts.append(fact)

    @property
    def ids(self) -> list[str]:
        return [f.event_id for f in self.facts]


async def post(client: TestClient[Any, Any], body: bytes, signature: str | None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json; charset=utf-8"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    async with client.post("/v1/stripe/webhook", data=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def rows(store: Store) -> list[dict[str, Any]]:
    return [dict(r) for r in await store.fetch_all("SELECT * FROM stripe_events ORDER BY id")]


async def deliver(inbox: StripeInbox, ev: dict[str, Any]) -> bool:
    body = se.encode(ev)
    return await inbox.receive(body, se.sign(body))


def sub_event(type_: str = "customer.subscription.updated", **kw: Any) -> dict[str, Any]:
    created = kw.pop("created", None)
    return se.event(type_, se.subscription(**kw), created=created)


# --- intake -------------------------------------------------------------------------
async def test_valid_event_is_stored_byte_identical(
    client: TestClient[Any, Any], store: Store
) -> None:
    ev = sub_event(metadata={"user_id": "user-1", "subdomain": "alice"})
    body = se.encode(ev)
    status, reply = await post(client, body, se.sign(body))
    assert (status, reply) == (200, {"received": True, "duplicate": False})
    [row] = await rows(store)
    assert row["id"] == ev["id"]
    assert row["type"] == "customer.subscription.updated"
    assert row["created"] == ev["created"]
    assert row["payload"].encode("utf-8") == body
    assert row["status"] == "pending"
    assert row["attempts"] == 0
    assert row["next_attempt_at"] == pytest.approx(row["received_at"])


async def test_non_ascii_body_is_stored_byte_identical(
    client: TestClient[Any, Any], store: Store
) -> None:
    ev = sub_event(metadata={"user_id": "usér-ü", "subdomain": "zoë"})
    body = json.dumps(ev, indent=2, ensure_ascii=False).encode()
    status, _ = await post(client, body, se.sign(body))
    assert status == 200
    [row] = await rows(store)
    assert row["payload"].encode("utf-8") == body


async def test_duplicate_is_acknowledged_and_changes_nothing(
    client: TestClient[Any, Any], store: Store
) -> None:
    ev = sub_event()
    body = se.encode(ev)
    assert (await post(client, body, se.sign(body)))[0] == 200
    before = await rows(store)
    # Stripe redelivers with a fresh signature timestamp.
    status, reply = await post(client, body, se.sign(body, timestamp=int(time.time()) + 5))
    assert (status, reply) == (200, {"received": True, "duplicate": True})
    assert await rows(store) == before


def _tampered() -> tuple[bytes, str]:
    body = se.encode(sub_event(status="past_due"))
    return body.replace(b'"past_due"', b'"active"'), se.sign(body)


def _wrong_secret() -> tuple[bytes, str]:
    body = se.encode(sub_event())
    return body, se.sign(body, secret="whsec_other_endpoint_" + "e" * 24)


def _reserialized() -> tuple[bytes, str]:
    # What a proxy or framework that re-encodes JSON does to a body.
    body = se.encode(sub_event())
    return json.dumps(json.loads(body)).encode(), se.sign(body)


def _v0_only() -> tuple[bytes, str]:
    body = se.encode(sub_event())
    return body, ",".join(p for p in se.sign(body).split(",") if not p.startswith("v1="))


def _stale() -> tuple[bytes, str]:
    body = se.encode(sub_event())
    return body, se.sign(body, timestamp=int(time.time()) - 301 - 5)


def _future() -> tuple[bytes, str]:
    body = se.encode(sub_event())
    return body, se.sign(body, timestamp=int(time.time()) + 301 + 5)


def _garbage_header() -> tuple[bytes, str]:
    return se.encode(sub_event()), "not-a-signature"


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (_tampered, "bad_signature"),
        (_wrong_secret, "bad_signature"),
        (_reserialized, "bad_signature"),
        (_v0_only, "bad_signature"),
        (_garbage_header, "bad_signature"),
        (_stale, "stale_event"),
        (_future, "future_event"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else v,
)
async def test_refused_deliveries_write_nothing(
    client: TestClient[Any, Any],
    store: Store,
    make: Callable[[], tuple[bytes, str]],
    code: str,
) -> None:
    body, signature = make()
    status, reply = await post(client, body, signature)
    assert status == 400
    assert reply["error"]["code"] == code
    assert reply["error"]["message"]
    assert await rows(store) == []


async def test_missing_header_is_refused(client: TestClient[Any, Any], store: Store) -> None:
    status, reply = await post(client, se.encode(sub_event()), None)
    assert status == 400
    assert reply["error"]["code"] == "missing_signature"
    assert await rows(store) == []


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"not json at all", "not JSON"),
        (b'["an", "array"]', "not a JSON object"),
        (b"\xff\xfe{}", "not UTF-8"),
        (json.dumps({"object": "event", "type": "x", "created": 1}).encode(), "id"),
        (json.dumps({"id": "evt_1", "object": "event", "created": 1}).encode(), "type"),
        (json.dumps({"id": "evt_1", "object": "event", "type": "x"}).encode(), "created"),
        (
            json.dumps({"id": "evt_1", "object": "event", "type": "x", "created": "1"}).encode(),
            "created",
        ),
        (
            json.dumps(
                {"id": "evt_1", "object": "v2.core.event", "type": "x", "created": 1}
            ).encode(),
            "snapshot",
        ),
    ],
)
async def test_malformed_but_signed_is_refused(
    client: TestClient[Any, Any], store: Store, body: bytes, detail: str
) -> None:
    # Signed over the raw bytes (the UTF-8 check comes before the signature).
    status, reply = await post(client, body, se.sign(body.decode("utf-8", "replace")))
    assert status == 400
    assert reply["error"]["code"] in {"malformed_event"}
    assert detail in reply["error"]["message"]
    assert await rows(store) == []


@pytest.mark.parametrize(
    ("offset", "accepted", "code"),
    [
        (-300, True, None),  # Stripe's rule: refused only when t < now - tolerance
        (-301, False, "stale_event"),
        (0, True, None),
        (300, True, None),  # ours, symmetric: refused only when t > now + tolerance
        (301, False, "future_event"),
    ],
)
async def test_tolerance_edges(
    inbox: StripeInbox,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    offset: int,
    accepted: bool,
    code: str | None,
) -> None:
    now = 1_760_000_000.0
    monkeypatch.setattr(time, "time", lambda: now)  # the stripe library reads time.time()
    body = se.encode(sub_event())
    signature = se.sign(body, timestamp=int(now) + offset)
    if accepted:
        assert await inbox.receive(body, signature) is True
        assert len(await rows(store)) == 1
    else:
        with pytest.raises(Exception) as info:
            await inbox.receive(body, signature)
        assert getattr(info.value, "code", None) == code
        assert getattr(info.value, "status", None) == 400
        assert await rows(store) == []


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.5, 0.999])
@pytest.mark.parametrize(("offset", "accepted"), [(-300, True), (-301, False), (300, True)])
async def test_tolerance_compares_whole_seconds(
    inbox: StripeInbox,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    fraction: float,
    offset: int,
    accepted: bool,
) -> None:
    """The contract is in seconds: an event exactly 300 s old is accepted at any
    fraction of the current second (the library alone compares against a float)."""
    now = 1_760_000_000 + fraction
    monkeypatch.setattr(time, "time", lambda: now)
    body = se.encode(sub_event())
    signature = se.sign(body, timestamp=1_760_000_000 + offset)
    if accepted:
        assert await inbox.receive(body, signature) is True
    else:
        with pytest.raises(Exception) as info:
            await inbox.receive(body, signature)
        assert getattr(info.value, "code", None) == "stale_event"
    assert len(await rows(store)) == (1 if accepted else 0)


@pytest.mark.parametrize(
    "header",
    [
        "t={t},v1=\u00e9",  # non-ASCII signature
        "t={t},v1={v1}\u00e9",
        "t=\u0661\u0662,v1={v1}",  # non-ASCII digits int() would accept
        "t=\u00e9,v1={v1}",
        "t=1_0,v1={v1}",
        "t=,v1={v1}",
        "v1={v1}",
        "t={t}=1,v1={v1}",
        "\u00e9",
    ],
)
async def test_malformed_signature_headers_are_bad_signatures(
    client: TestClient[Any, Any], inbox: StripeInbox, store: Store, header: str
) -> None:
    body = se.encode(sub_event())
    t, v1 = (p.split("=", 1)[1] for p in se.sign(body, v0=False).split(","))
    value = header.encode().decode("unicode_escape").format(t=t, v1=v1)
    with pytest.raises(Exception) as info:
        await inbox.receive(body, value)
    assert (getattr(info.value, "status", None), getattr(info.value, "code", None)) == (
        400,
        "bad_signature",
    )
    # And through HTTP (aiohttp sends the header as UTF-8).
    async with client.post(
        "/v1/stripe/webhook", data=body, headers={"Stripe-Signature": value}
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "bad_signature"
    assert await rows(store) == []


def _with(ev: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**ev, **fields}


@pytest.mark.parametrize(
    ("livemode", "account_id", "fields", "code"),
    [
        (False, "", {}, None),
        (False, "", {"livemode": True}, "wrong_mode"),
        (True, "", {}, "wrong_mode"),  # the fixtures' events are test-mode
        (True, "", {"livemode": True}, None),
        (False, "", {"livemode": None}, "wrong_mode"),
        (False, "", {"livemode": "false"}, "wrong_mode"),
        (False, "", {"livemode": 0}, "wrong_mode"),
        (False, "", {"account": "acct_1Other"}, "wrong_account"),
        (False, "acct_1Mine", {"account": "acct_1Other"}, "wrong_account"),
        (False, "acct_1Mine", {"account": "acct_1Mine"}, None),
        (False, "acct_1Mine", {}, None),  # the endpoint owner's own events carry no account
    ],
)
async def test_events_of_another_mode_or_account_are_refused(
    store: Store,
    livemode: bool,
    account_id: str,
    fields: dict[str, Any],
    code: str | None,
) -> None:
    inbox = StripeInbox(store, se.WEBHOOK_SECRET, livemode=livemode, account_id=account_id)
    ev = {k: v for k, v in _with(sub_event(), **fields).items() if k != "livemode"}
    if "livemode" not in fields or fields["livemode"] is not None:
        ev["livemode"] = fields.get("livemode", False)
    body = se.encode(ev)
    if code is None:
        assert await inbox.receive(body, se.sign(body)) is True
        assert len(await rows(store)) == 1
        return
    with pytest.raises(Exception) as info:
        await inbox.receive(body, se.sign(body))
    assert (getattr(info.value, "status", None), getattr(info.value, "code", None)) == (400, code)
    assert await rows(store) == []


async def test_storage_failure_answers_503_and_writes_nothing(
    client: TestClient[Any, Any], store: Store
) -> None:
    async def refuse_inserts(conn: Any) -> None:
        await conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON stripe_events "
            "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        )

    await store.write(refuse_inserts)
    body = se.encode(sub_event())
    status, reply = await post(client, body, se.sign(body))
    assert status == 503
    assert reply["error"]["code"] == "unavailable"
    assert await rows(store) == []

    async def allow_inserts(conn: Any) -> None:
        await conn.execute("DROP TRIGGER refuse")

    await store.write(allow_inserts)
    # Stripe's retry of the same delivery is then stored.
    status, reply = await post(client, body, se.sign(body))
    assert (status, reply["duplicate"]) == (200, False)
    assert len(await rows(store)) == 1


async def test_closed_store_answers_503(client: TestClient[Any, Any], store: Store) -> None:
    await store.close()
    body = se.encode(sub_event())
    status, reply = await post(client, body, se.sign(body))
    assert status == 503
    assert reply["error"]["code"] == "unavailable"


async def test_unconfigured_secret_answers_503(store: Store, aiohttp_client: AiohttpClient) -> None:
    app = web.Application(middlewares=[errors])
    app[INBOX] = StripeInbox(store, "")
    app.add_routes(stripe_routes)
    client = await aiohttp_client(app)
    body = se.encode(sub_event())
    status, reply = await post(client, body, se.sign(body))
    assert (status, reply["error"]["code"]) == (503, "not_configured")
    assert await rows(store) == []


async def test_route_without_inbox_answers_503(aiohttp_client: AiohttpClient) -> None:
    app = web.Application(middlewares=[errors])
    app.add_routes(stripe_routes)
    client = await aiohttp_client(app)
    body = se.encode(sub_event())
    status, reply = await post(client, body, se.sign(body))
    assert (status, reply["error"]["code"]) == (503, "not_configured")


# --- decoding -----------------------------------------------------------------------
_META = {"user_id": "user-7", "subdomain": "bob"}


def _fact(ev: dict[str, Any], **fields: Any) -> BillingFact:
    base: dict[str, Any] = {
        "event_id": ev["id"],
        "event_type": ev["type"],
        "state_at": ev["created"],
        "user_id": None,
        "subdomain": None,
        "customer_id": se.CUSTOMER,
        "subscription_id": se.SUBSCRIPTION,
        "status": None,
        "price_id": None,
        "current_period_end": None,
        "refetched": False,
    }
    return BillingFact(**{**base, **fields})


def _case_checkout_reference() -> tuple[dict[str, Any], BillingFact | None]:
    ev = se.event(
        "checkout.session.completed",
        se.checkout_session(client_reference_id="user-1", metadata={"subdomain": "alice"}),
    )
    return ev, _fact(ev, user_id="user-1", subdomain="alice")


def _case_checkout_metadata() -> tuple[dict[str, Any], BillingFact | None]:
    ev = se.event(
        "checkout.session.completed",
        se.checkout_session(client_reference_id=None, metadata=_META),
    )
    return ev, _fact(ev, user_id="user-7", subdomain="bob")


def _case_checkout_reference_wins() -> tuple[dict[str, Any], BillingFact | None]:
    ev = se.event(
        "checkout.session.completed",
        se.checkout_session(client_reference_id="user-1", metadata=_META),
    )
    return ev, _fact(ev, user_id="user-1", subdomain="bob")


def _case_checkout_expanded() -> tuple[dict[str, Any], BillingFact | None]:
    session = se.checkout_session()
    session["customer"] = {"id": se.CUSTOMER, "object": "customer"}
    session["subscription"] = se.subscription()
    ev = se.event("checkout.session.completed", session)
    return ev, _fact(ev, user_id="user-1")


def _sub_case(type_: str, status: str, expected: str) -> tuple[dict[str, Any], BillingFact]:
    ev = se.event(type_, se.subscription(status=status, metadata=_META))
    return ev, _fact(
        ev,
        user_id="user-7",
        subdomain="bob",
        status=expected,
        price_id=se.PRICE,
        current_period_end=se.PERIOD_END,
    )


def _case_sub_created() -> tuple[dict[str, Any], BillingFact | None]:
    return _sub_case("customer.subscription.created", "incomplete", "incomplete")


def _case_sub_updated() -> tuple[dict[str, Any], BillingFact | None]:
    return _sub_case("customer.subscription.updated", "past_due", "past_due")


def _case_sub_deleted() -> tuple[dict[str, Any], BillingFact | None]:
    return _sub_case("customer.subscription.deleted", "canceled", "deleted")


def _case_sub_legacy_period() -> tuple[dict[str, Any], BillingFact | None]:
    sub = se.subscription()
    del sub["items"]["data"][0]["current_period_end"]
    sub["current_period_end"] = 1_700_000_000
    ev = se.event("customer.subscription.updated", sub)
    return ev, _fact(ev, status="active", price_id=se.PRICE, current_period_end=1_700_000_000)


def _case_sub_previous_status() -> tuple[dict[str, Any], BillingFact | None]:
    ev = se.event(
        "customer.subscription.updated",
        se.subscription(status="active"),
        previous_attributes={"status": "past_due"},
    )
    return ev, _fact(
        ev,
        status="active",
        price_id=se.PRICE,
        current_period_end=se.PERIOD_END,
        previous_status="past_due",
    )


def _case_invoice_paid() -> tuple[dict[str, Any], BillingFact | None]:
    ev = se.event("invoice.paid", se.invoice(subscription_metadata=_META))
    return ev, _fact(ev, user_id="user-7", subdomain="bob")


def _case_invoice_failed_legacy() -> tuple[dict[str, Any], BillingFact | None]:
    ev = se.event(
        "invoice.payment_failed",
        se.invoice(legacy=True, paid=False, subscription_metadata={"user_id": "user-9"}),
    )
    return ev, _fact(ev, user_id="user-9")


def _case_invoice_no_subscription() -> tuple[dict[str, Any], BillingFact | None]:
    inv = se.invoice(subscription_id=None)
    inv["parent"] = None
    ev = se.event("invoice.paid", inv)
    return ev, _fact(ev, subscription_id=None)


def _case_ignored() -> tuple[dict[str, Any], BillingFact | None]:
    return se.event("customer.created", {"id": se.CUSTOMER, "object": "customer"}), None


@pytest.mark.parametrize(
    "case",
    [
        _case_checkout_reference,
        _case_checkout_metadata,
        _case_checkout_reference_wins,
        _case_checkout_expanded,
        _case_sub_created,
        _case_sub_updated,
        _case_sub_deleted,
        _case_sub_legacy_period,
        _case_sub_previous_status,
        _case_invoice_paid,
        _case_invoice_failed_legacy,
        _case_invoice_no_subscription,
        _case_ignored,
    ],
    ids=lambda f: f.__name__.removeprefix("_case_"),
)
def test_decode(case: Callable[[], tuple[dict[str, Any], BillingFact | None]]) -> None:
    ev, expected = case()
    # Decoding works on what was stored: the JSON text, parsed again.
    assert decode(json.loads(se.encode(ev))) == expected


@pytest.mark.parametrize(
    ("file", "type_", "fields"),
    [
        (
            "checkout_session.json",
            "checkout.session.completed",
            {"user_id": None, "customer_id": None, "subscription_id": None, "status": None},
        ),
        (
            "subscription.json",
            "customer.subscription.updated",
            {
                "subscription_id": "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw",
                "customer_id": "cus_QXg1o8vcGmoR32",
                "status": "active",
                "price_id": "price_1PgafmB7WZ01zgkW6dKueIc5",
                "current_period_end": 976287773,
            },
        ),
        (
            "invoice.json",
            "invoice.paid",
            {"subscription_id": "subscription", "customer_id": "cus_QXg1o8vcGmoR32"},
        ),
        ("event.json", "plan.created", None),
    ],
)
def test_decode_reference_objects(file: str, type_: str, fields: dict[str, Any] | None) -> None:
    """The reference fixtures themselves (Stripe's OpenAPI examples), as delivered."""
    path = REFERENCE / file
    if not path.exists():
        pytest.skip(f"{path} is not on this machine")
    obj = json.loads(path.read_text())
    ev = obj if obj.get("object") == "event" else se.event(type_, obj)
    fact = decode(ev)
    if fields is None:
        assert fact is None
        return
    assert fact is not None
    assert {k: getattr(fact, k) for k in fields} == fields


def test_decode_refuses_a_broken_handled_event() -> None:
    ev = se.event("customer.subscription.updated", {"object": "subscription"})
    with pytest.raises(ValueError, match="without id or status"):
        decode(ev)


@pytest.mark.parametrize(
    ("attempts", "low", "high"),
    [
        (0, 4.0, 5.0),
        (1, 4.0, 5.0),
        (2, 8.0, 10.0),
        (3, 16.0, 20.0),
        (5, 64.0, 80.0),
        (10, 2048.0, 2560.0),
        (11, 2880.0, 3600.0),  # capped: 5 * 2**10 = 5120 > 3600
        (1000, 2880.0, 3600.0),  # no overflow
    ],
)
def test_backoff_table(attempts: int, low: float, high: float) -> None:
    assert backoff(attempts, rand=0.0) == high
    assert backoff(attempts, rand=1.0) == pytest.approx(low)
    for _ in range(50):
        assert low - 1e-9 <= backoff(attempts) <= high


def test_backoff_cap_is_a_parameter() -> None:
    assert backoff(20, cap=60.0, rand=0.0) == 60.0


# --- processing ---------------------------------------------------------------------
async def test_processing_order_is_by_created(inbox: StripeInbox, store: Store) -> None:
    late = sub_event(created=3000, status="canceled")
    early = sub_event(created=1000, status="trialing")
    middle_b = sub_event(created=2000, status="active")
    middle_a = sub_event(created=2000, status="past_due")
    for ev in (late, early, middle_b, middle_a):
        assert await deliver(inbox, ev)
    apply = Recorder()
    assert await inbox.process_due(apply) == 4
    # Same created: received first goes first.
    assert apply.ids == [early["id"], middle_b["id"], middle_a["id"], late["id"]]
    assert [f.status for f in apply.facts] == ["trialing", "active", "past_due", "canceled"]
    assert await inbox.process_due(apply) == 0
    assert await inbox.counts() == {"pending": 0, "failing": 0, "done": 4}
    assert all(r["processed_at"] is not None for r in await rows(store))


async def test_limit_bounds_a_round(inbox: StripeInbox) -> None:
    for created in range(5):
        await deliver(inbox, sub_event(created=created))
    apply = Recorder()
    assert await inbox.process_due(apply, limit=2) == 2
    assert await inbox.process_due(apply, limit=2) == 2
    assert await inbox.process_due(apply, limit=2) == 1
    assert len(apply.facts) == 5


async def test_ignored_types_are_done_without_apply(inbox: StripeInbox) -> None:
    await deliver(inbox, se.event("customer.created", {"id": se.CUSTOMER, "object": "customer"}))
    apply = Recorder()
    assert await inbox.process_due(apply) == 1
    assert apply.facts == []
    assert await inbox.counts() == {"pending": 0, "failing": 0, "done": 1}


@pytest.mark.parametrize("batch", [1, 2, 500])
async def test_prune_keeps_done_events_for_a_week_then_deletes_them(
    inbox: StripeInbox, store: Store, batch: int
) -> None:
    old = [sub_event() for _ in range(3)]
    for ev in old:
        await deliver(inbox, ev)
    t0 = time.time() + 1
    assert await inbox.process_due(Recorder(), now=t0) == 3
    recent, failing = sub_event(), sub_event()
    await deliver(inbox, recent)
    assert await inbox.process_due(Recorder(), now=t0 + 86400) == 1
    await deliver(inbox, failing)
    await inbox.process_due(Recorder(failures=1), now=t0)  # still due, never pruned
    week = 7 * 86400
    assert await inbox.prune(now=t0 + week - 1, batch=batch) == 0  # inside the window
    assert await inbox.prune(now=t0 + week + 1, batch=batch) == 3
    assert {r["id"] for r in await rows(store)} == {recent["id"], failing["id"]}
    assert await inbox.prune(now=t0 + week + 1, batch=batch) == 0
    # Within the window a redelivery is still a duplicate.
    assert await deliver(inbox, recent) is False


async def test_prune_uses_the_done_index(store: Store) -> None:
    plan = await store.fetch_all(
        "EXPLAIN QUERY PLAN SELECT id FROM stripe_events "
        "WHERE status = 'done' AND processed_at < ? LIMIT ?",
        (0, 500),
    )
    assert any("stripe_events_done" in str(row[3]) for row in plan), [tuple(r) for r in plan]


async def test_failures_back_off_then_become_failing(inbox: StripeInbox, store: Store) -> None:
    ev = sub_event()
    await deliver(inbox, ev)
    apply = Recorder(failures=5)
    now = time.time() + 1
    for attempt in range(1, 6):
        assert await inbox.process_due(apply, now=now) == 1
        [row] = await rows(store)
        assert row["attempts"] == attempt
        assert row["last_error"] == "RuntimeError: placement unavailable"
        delay = row["next_attempt_at"] - now
        high = min(3600.0, 5.0 * 2 ** (attempt - 1))
        assert 0.8 * high - 1e-6 <= delay <= high
        assert row["status"] == ("failing" if attempt >= 5 else "pending")
        # Not due before its time.
        assert await inbox.process_due(apply, now=row["next_attempt_at"] - 0.01) == 0
        now = row["next_attempt_at"]
    failing = await inbox.failing()
    assert failing == [
        {
            "id": ev["id"],
            "type": "customer.subscription.updated",
            "attempts": 5,
            "last_error": "RuntimeError: placement unavailable",
            "next_attempt_at": failing[0]["next_attempt_at"],
        }
    ]
    assert failing[0]["next_attempt_at"].endswith("Z")
    assert await inbox.counts() == {"pending": 0, "failing": 1, "done": 0}
    # 'failing' is still retried; success clears it.
    assert await inbox.process_due(apply, now=now) == 1
    assert apply.ids == [ev["id"]]
    assert await inbox.failing() == []
    [row] = await rows(store)
    assert (row["status"], row["last_error"]) == ("done", None)


async def test_a_failing_event_does_not_block_later_ones(inbox: StripeInbox) -> None:
    first, second = sub_event(created=1), sub_event(created=2)
    await deliver(inbox, first)
    await deliver(inbox, second)
    apply = Recorder(failures=1)
    assert await inbox.process_due(apply) == 2
    assert apply.ids == [second["id"]]


async def test_restart_processes_pending_events_exactly_once(tmp_path: Path) -> None:
    path = str(tmp_path / "clawfleet.db")
    first = Store(path)
    await first.open()
    events = [sub_event(created=c) for c in (30, 10, 20)]
    inbox = StripeInbox(first, se.WEBHOOK_SECRET)
    for ev in events:
        assert await deliver(inbox, ev)
    await first.close()  # the process stops before processing anything

    second = Store(path)
    await second.open()
    try:
        inbox = StripeInbox(second, se.WEBHOOK_SECRET)
        apply = Recorder()
        assert await inbox.process_due(apply) == 3
        assert await inbox.process_due(apply) == 0
        assert apply.ids == [events[1]["id"], events[2]["id"], events[0]["id"]]
        # A redelivery after the restart is still a duplicate.
        assert await deliver(inbox, events[0]) is False
        assert await inbox.process_due(apply) == 0
    finally:
        await second.close()


async def test_crash_between_apply_and_mark_done_applies_again(tmp_path: Path) -> None:
    path = str(tmp_path / "clawfleet.db")
    first = Store(path)
    await first.open()
    ev = sub_event()
    await deliver(StripeInbox(first, se.WEBHOOK_SECRET), ev)
    applied: list[str] = []

    async def apply_then_crash(fact: BillingFact) -> None:
        applied.append(fact.event_id)
        await first.close()  # the process dies before the event is marked done

    with pytest.raises(RuntimeError, match="not open"):
        await StripeInbox(first, se.WEBHOOK_SECRET).process_due(apply_then_crash)

    second = Store(path)
    await second.open()
    try:
        apply = Recorder()
        assert await StripeInbox(second, se.WEBHOOK_SECRET).process_due(apply) == 1
        assert applied == apply.ids == [ev["id"]]  # at least once: applied again
    finally:
        await second.close()


async def test_run_wakes_on_a_stored_event_and_cancels(
    client: TestClient[Any, Any], inbox: StripeInbox
) -> None:
    seen = asyncio.Event()
    apply = Recorder()

    async def record(fact: BillingFact) -> None:
        await apply(fact)
        seen.set()

    task = asyncio.create_task(inbox.run(record, asyncio.Event(), interval=60.0))
    try:
        async with asyncio.timeout(5):
            await inbox.idle.wait()  # the first (empty) round done, now in its 60 s wait
        body = se.encode(sub_event())
        assert (await post(client, body, se.sign(body)))[0] == 200
        async with asyncio.timeout(5):
            await seen.wait()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(apply.facts) == 1


async def test_run_survives_a_broken_round(
    inbox: StripeInbox, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    await store.close()
    task = asyncio.create_task(inbox.run(Recorder(), asyncio.Event(), interval=0.01))
    try:
        async with asyncio.timeout(5):
            await inbox.idle.wait()  # a round failed
            inbox.idle.clear()
            await inbox.idle.wait()  # and the loop went on to the next one
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert "Stripe inbox round failed" in caplog.text


# --- re-fetch -----------------------------------------------------------------------
def refetching(store: Store, fake: StripeFake, **kw: Any) -> StripeInbox:
    return StripeInbox(store, se.WEBHOOK_SECRET, api_key=fake.api_key, api_base=fake.url, **kw)


async def test_refetch_state_wins_over_the_event(store: Store, stripe_fake: StripeFake) -> None:
    stripe_fake.subscriptions[se.SUBSCRIPTION] = se.subscription(
        status="past_due", price="price_pro", current_period_end=1_800_000_000, metadata=_META
    )
    inbox = refetching(store, stripe_fake)
    ev = sub_event(status="active", created=1_000)
    await deliver(inbox, ev)
    apply = Recorder()
    before = int(time.time())
    assert await inbox.process_due(apply) == 1
    [fact] = apply.facts
    assert fact.refetched is True
    assert (fact.status, fact.price_id, fact.current_period_end) == (
        "past_due",
        "price_pro",
        1_800_000_000,
    )
    assert (fact.user_id, fact.subdomain) == ("user-7", "bob")
    assert before <= fact.state_at <= int(time.time())
    assert stripe_fake.count(f"/v1/subscriptions/{se.SUBSCRIPTION}") == 1


async def test_refetch_gives_checkout_and_invoices_a_status(
    store: Store, stripe_fake: StripeFake
) -> None:
    stripe_fake.subscriptions[se.SUBSCRIPTION] = se.subscription(
        status="active", metadata={"user_id": "from-subscription", "subdomain": "sub-sd"}
    )
    inbox = refetching(store, stripe_fake)
    checkout = se.event(
        "checkout.session.completed",
        se.checkout_session(client_reference_id="user-1", metadata={}),
        created=1,
    )
    paid = se.event("invoice.paid", se.invoice(), created=2)
    await deliver(inbox, checkout)
    await deliver(inbox, paid)
    apply = Recorder()
    assert await inbox.process_due(apply) == 2
    c, i = apply.facts
    # The checkout's client_reference_id is who paid; the subscription fills the rest.
    assert (c.user_id, c.subdomain, c.status, c.refetched) == ("user-1", "sub-sd", "active", True)
    assert (i.user_id, i.status, i.price_id) == ("from-subscription", "active", se.PRICE)
    assert stripe_fake.count() == 2


async def test_deleted_subscription_is_not_refetched(store: Store, stripe_fake: StripeFake) -> None:
    inbox = refetching(store, stripe_fake)
    await deliver(inbox, sub_event("customer.subscription.deleted", status="canceled"))
    apply = Recorder()
    assert await inbox.process_due(apply) == 1
    assert (apply.facts[0].status, apply.facts[0].refetched) == ("deleted", False)
    assert stripe_fake.count() == 0


async def test_without_api_key_no_http_call(store: Store, stripe_fake: StripeFake) -> None:
    stripe_fake.subscriptions[se.SUBSCRIPTION] = se.subscription(status="past_due")
    inbox = StripeInbox(store, se.WEBHOOK_SECRET, api_base=stripe_fake.url)
    await deliver(inbox, sub_event(status="active"))
    apply = Recorder()
    assert await inbox.process_due(apply) == 1
    assert (apply.facts[0].status, apply.facts[0].refetched) == ("active", False)
    assert stripe_fake.count() == 0


async def test_refetch_errors_are_retried(store: Store, stripe_fake: StripeFake) -> None:
    inbox = refetching(store, stripe_fake)
    await deliver(inbox, sub_event())
    apply = Recorder()
    now = time.time() + 1
    # Unknown subscription: Stripe's 404 resource_missing.
    assert await inbox.process_due(apply, now=now) == 1
    [row] = await rows(store)
    assert row["attempts"] == 1
    assert "InvalidRequestError" in row["last_error"]
    assert "No such subscription" in row["last_error"]
    # Then a 500.
    stripe_fake.subscriptions[se.SUBSCRIPTION] = se.subscription(status="unpaid")
    stripe_fake.inject(500, message="Something went wrong on Stripe's end.")
    now = row["next_attempt_at"]
    assert await inbox.process_due(apply, now=now) == 1
    [row] = await rows(store)
    assert row["attempts"] == 2
    assert "APIError" in row["last_error"]
    assert apply.facts == []
    # Then it answers.
    assert await inbox.process_due(apply, now=row["next_attempt_at"]) == 1
    assert [f.status for f in apply.facts] == ["unpaid"]
    assert stripe_fake.count() == 3


async def test_refetch_timeout_is_a_retry(store: Store, stripe_fake: StripeFake) -> None:
    stripe_fake.subscriptions[se.SUBSCRIPTION] = se.subscription()
    stripe_fake.delay(3.0)
    inbox = refetching(store, stripe_fake, refetch_timeout=0.3)
    await deliver(inbox, sub_event())
    apply = Recorder()
    assert await inbox.process_due(apply) == 1
    [row] = await rows(store)
    # The fake answers after 3 s: a retry recorded rather than a fact applied proves
    # the 0.3 s bound cut the call short.
    assert row["attempts"] == 1 and row["last_error"].startswith("TimeoutError")
    assert apply.facts == []


async def test_wrong_api_key_is_a_retry(store: Store, stripe_fake: StripeFake) -> None:
    stripe_fake.subscriptions[se.SUBSCRIPTION] = se.subscription()
    inbox = StripeInbox(
        store, se.WEBHOOK_SECRET, api_key="sk_test_wrong_" + "f" * 24, api_base=stripe_fake.url
    )
    await deliver(inbox, sub_event())
    assert await inbox.process_due(Recorder()) == 1
    [row] = await rows(store)
    assert "AuthenticationError" in row["last_error"]
    assert "f" * 24 not in row["last_error"]


async def test_no_secret_reaches_logs_or_last_error(
    store: Store,
    stripe_fake: StripeFake,
    client: TestClient[Any, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    stripe_fake.subscriptions[se.SUBSCRIPTION] = se.subscription()
    inbox = refetching(store, stripe_fake)
    # Refused deliveries of every kind, through the route.
    for make in (_tampered, _wrong_secret, _stale, _future):
        body, signature = make()
        await post(client, body, signature)
    # Stored, re-fetched, failed with an error that quotes both secrets, then applied.
    await deliver(inbox, sub_event())
    await deliver(inbox, sub_event())
    stripe_fake.inject(500)
    leaky = Recorder(failures=1, error=f"boom {se.WEBHOOK_SECRET} {stripe_fake.api_key}")
    now = time.time() + 1
    await inbox.process_due(leaky, now=now)
    failed = json.dumps(await rows(store))
    assert "APIError" in failed
    assert "boom [redacted] [redacted]" in failed
    await inbox.process_due(leaky, now=now + 10_000)
    assert len(leaky.facts) == 2
    assert "boom [redacted] [redacted]" in caplog.text
    for secret in (se.WEBHOOK_SECRET, stripe_fake.api_key):
        assert secret not in caplog.text
        assert secret not in failed
    assert "Stripe event" in caplog.text  # the logs were captured at all
    assert "refused Stripe delivery (bad_signature)" in caplog.text


def test_tolerance_must_be_positive(store: Store) -> None:
    with pytest.raises(ValueError, match="positive"):
        StripeInbox(store, se.WEBHOOK_SECRET, tolerance=0)


async def test_counts_start_at_zero(inbox: StripeInbox) -> None:
    assert await inbox.counts() == {"pending": 0, "failing": 0, "done": 0}
    assert await inbox.failing() == []
