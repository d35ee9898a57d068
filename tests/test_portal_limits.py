"""The portal's rate limits and its refusal of cross-site requests, through the real
control plane, the real `stripe` library and the fake Stripe API: a text/plain form
opens no Checkout; name checks are limited per client address; a customer's restarts,
setting changes, rotations, sign-in links and billing-portal sessions per address, each
refusal a 429 with Retry-After and words the page shows, changing nothing, and another
client or customer unaffected."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest

from control.appkeys import STORE
from control.portal.customers import wait_words
from tests.dashboard.http import Reply, call
from tests.fakes.stripe_api import StripeFake, stripe_fake_fixture  # noqa: F401
from tests.fixtures import ControlPlane
from tests.portal_customers import Inbox, Signed, add_customer, sign_in, smtp  # noqa: F401
from tests.portal_customers import portal_plane as customers_plane
from tests.portal_signup import portal_plane as signup_plane
from tests.test_protocol import registered
from tests.worker import FakeWorker

AGENT = "/portal/api/account/agents/{}"
ORDER = '{"subdomain": "alice", "plan": "pro", "email": "alice@example.com"}'


@asynccontextmanager
async def from_address(address: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A client on another loopback address: a different caller to the limits."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def open_checkouts(plane: ControlPlane) -> int:
    assert plane.app is not None
    row = await plane.app[STORE].fetch_one("SELECT COUNT(*) AS n FROM checkouts")
    assert row is not None
    return int(row["n"])


@pytest.mark.parametrize(
    "form",
    [
        {"data": ORDER, "headers": {"Content-Type": "text/plain"}},
        {"data": {"subdomain": "alice", "plan": "pro", "email": "alice@example.com"}},
        {"data": ORDER.encode(), "headers": {"Content-Type": "multipart/form-data"}},
    ],
)
async def test_a_cross_site_form_opens_no_checkout(
    control_factory: Callable[..., ControlPlane], stripe_fake: StripeFake, form: dict[str, object]
) -> None:
    plane = signup_plane(control_factory, stripe_fake)
    await plane.start()
    reply = await call(plane, "POST", "/portal/api/checkout", **form)
    assert reply.status == 415, reply.text
    assert reply.json()["error"] == {
        "code": "unsupported_media_type",
        "message": "send Content-Type: application/json",
    }
    assert stripe_fake.count() == 0  # no Stripe call at all
    assert await open_checkouts(plane) == 0  # and no name reserved
    # The same order as JSON, as the page sends it, opens one: the 415 was the type.
    sent = await call(plane, "POST", "/portal/api/checkout", json={"subdomain": "alice",
        "plan": "pro", "email": "alice@example.com"})  # fmt: skip
    assert sent.status == 201, sent.text
    assert await open_checkouts(plane) == 1


async def available(session: aiohttp.ClientSession, plane: ControlPlane, name: str) -> Reply:
    url = plane.url + "/portal/api/availability"
    async with session.get(url, params={"subdomain": name}) as r:
        return Reply(r.status, dict(r.headers), [], await r.text())


async def test_name_checks_are_limited_per_client_address(
    control_factory: Callable[..., ControlPlane], stripe_fake: StripeFake
) -> None:
    plane = signup_plane(control_factory, stripe_fake)
    await plane.start()
    for n in range(60):  # a buyer typing a long name, then changing their mind, fits
        reply = await available(plane.session, plane, f"name-{n}")
        assert reply.status == 200, (n, reply.text)
        assert reply.json()["available"] is True
    refused = await available(plane.session, plane, "alice")
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"
    body = refused.json()
    assert body["available"] is False and body["error"]["code"] == "rate_limited"
    assert body["reason"] == "too many name checks from your address: try again in a few seconds"
    async with from_address("127.0.0.2") as elsewhere:
        other = await available(elsewhere, plane, "alice")
    assert other.status == 200 and other.json()["available"] is True


@pytest.fixture
async def customers(
    control_factory: Callable[..., ControlPlane],
    smtp: tuple[Inbox, int],  # noqa: F811
    stripe_fake: StripeFake,
) -> tuple[ControlPlane, Inbox, FakeWorker]:
    plane = customers_plane(control_factory, smtp[1], stripe_fake)
    await plane.start()
    stripe_fake.customers.update({"cus_alice", "cus_bob"})
    worker = await registered(plane)
    await add_customer(plane, "alice", "alice@example.com", "cus_alice")
    await add_customer(plane, "bob", "bob@example.com", "cus_bob")
    return plane, smtp[0], worker


async def act(plane: ControlPlane, who: Signed, method: str, user_id: str, what: str) -> Reply:
    body = {"ANTHROPIC_API_KEY": "sk-ant-" + "x" * 40} if what == "settings" else {}
    path = AGENT.format(user_id) + "/" + what
    return await call(plane, method, path, headers=who.headers(), json=body)


async def spec_hash(worker: FakeWorker, user_id: str) -> str:
    reply = await worker.assignments()
    return str(next(c for c in reply.body["containers"] if c["user_id"] == user_id)["spec_hash"])


def refused(reply: Reply, words: str) -> None:
    assert reply.status == 429, reply.text
    assert int(reply.headers["Retry-After"]) > 0
    error = reply.json()["error"]
    assert error["code"] == "rate_limited"
    assert error["message"].startswith(f"too many {words}: try again in ")


async def test_restarts_and_changes_are_limited_per_address(
    customers: tuple[ControlPlane, Inbox, FakeWorker],
) -> None:
    plane, inbox, worker = customers
    alice = await sign_in(plane, inbox, "alice@example.com")
    for _ in range(5):  # each one replaces her container
        before = await spec_hash(worker, "alice")
        assert (await act(plane, alice, "POST", "alice", "restart")).status == 200
        assert await spec_hash(worker, "alice") != before
    spent = await spec_hash(worker, "alice")
    refused(
        await act(plane, alice, "POST", "alice", "restart"), "restarts and changes for your account"
    )
    refused(
        await act(plane, alice, "PUT", "alice", "settings"), "restarts and changes for your account"
    )
    refused(
        await act(plane, alice, "POST", "alice", "rotate"), "restarts and changes for your account"
    )
    assert await spec_hash(worker, "alice") == spent  # no container replaced
    _, names = await plane.admin("GET", "/v1/users/alice/secrets")
    assert names["names"] == []  # the refused key was not stored
    # Another session of hers counts against the same address; links still work.
    again = await sign_in(plane, inbox, "alice@example.com")
    refused(
        await act(plane, again, "POST", "alice", "restart"), "restarts and changes for your account"
    )
    assert (await act(plane, again, "POST", "alice", "open")).status == 201
    # Bob is another customer: his restart goes through.
    bob = await sign_in(plane, inbox, "bob@example.com")
    before = await spec_hash(worker, "bob")
    assert (await act(plane, bob, "POST", "bob", "restart")).status == 200
    assert await spec_hash(worker, "bob") != before


async def test_billing_portal_and_open_are_limited_per_address(
    customers: tuple[ControlPlane, Inbox, FakeWorker], stripe_fake: StripeFake
) -> None:
    plane, inbox, _ = customers
    alice = await sign_in(plane, inbox, "alice@example.com")
    for _ in range(10):
        assert (await act(plane, alice, "POST", "alice", "billing-portal")).status == 201
        assert (await act(plane, alice, "POST", "alice", "open")).status == 201
    refused(
        await act(plane, alice, "POST", "alice", "billing-portal"), "requests from your account"
    )
    refused(await act(plane, alice, "POST", "alice", "open"), "requests from your account")
    assert len(stripe_fake.billing_portal_sessions) == 10  # the refusal asked Stripe nothing
    bob = await sign_in(plane, inbox, "bob@example.com")
    assert (await act(plane, bob, "POST", "bob", "billing-portal")).status == 201
    assert len(stripe_fake.billing_portal_sessions) == 11


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (1, "in a few seconds"),
        (9, "in a few seconds"),
        (10, "in 10 seconds"),
        (59, "in 59 seconds"),
        (60, "in a minute"),
        (61, "in 2 minutes"),
        (120, "in 2 minutes"),
        (3600, "in 60 minutes"),
    ],
)
def test_wait_words(seconds: int, words: str) -> None:
    assert wait_words(seconds) == words
