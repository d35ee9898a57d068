"""Stripe webhooks drive users through the real control plane: signed deliveries,
duplicates, out-of-order events, unknown prices, and a restart with events queued."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from control.appkeys import FLEET, INBOX
from control.billing.inbox import StripeInbox
from control.db.store import Store
from control.plans import DEFAULT_PLAN, Plan
from tests import stripe_events as se
from tests.fixtures import ControlPlane
from tests.test_protocol import registered

PRO = Plan("pro", 2048, 1.0, 1024, 20, (se.PRICE,))
HEALTHY = {
    "state": "running",
    "health": "healthy",
    "image_id": "x",
    "started_at": "",
    "restart_count": 0,
}


@pytest.fixture
async def plane(control_factory: Callable[..., ControlPlane]) -> ControlPlane:
    control = control_factory(
        stripe_webhook_secret=se.WEBHOOK_SECRET, plans={"default": DEFAULT_PLAN, "pro": PRO}
    )
    await control.start()
    return control


async def deliver(
    control: ControlPlane, event: dict[str, Any], *, tamper: bool = False
) -> tuple[int, Any]:
    body = se.encode(event)
    header = se.sign(body)
    if tamper:
        body = body.replace(b'"livemode": false', b'"livemode": true ')
    async with control.session.post(
        control.url + "/v1/stripe/webhook",
        data=body,
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
    ) as r:
        return r.status, await r.json()


def checkout(user: str, created: int | None = None) -> dict[str, Any]:
    session = se.checkout_session(client_reference_id=user, metadata={"subdomain": user})
    return se.event("checkout.session.completed", session, created=created)


def subscription(
    kind: str, status: str, created: int | None = None, price: str = se.PRICE
) -> dict[str, Any]:
    return se.event(
        f"customer.subscription.{kind}",
        se.subscription(status=status, price=price),
        created=created,
    )


async def inbox_idle(control: ControlPlane) -> None:
    """Until the app's own inbox loop has processed every delivery acknowledged so far."""
    assert control.app is not None
    async with asyncio.timeout(30):
        await control.app[INBOX].idle.wait()


async def until_state(control: ControlPlane, user: str, *states: str) -> dict[str, Any]:
    await inbox_idle(control)
    status, body = await control.admin("GET", f"/v1/users/{user}")
    assert status == 200 and body["state"] in states, f"{user} is not in {states}: {body}"
    return body


async def test_payment_runs_the_user(plane: ControlPlane) -> None:
    worker = await registered(plane)
    assert (await deliver(plane, checkout("alice")))[0] == 200
    assert (await deliver(plane, subscription("created", "active")))[0] == 200
    alice = await until_state(plane, "alice", "provisioning")
    assert alice["plan"] == "pro" and alice["billing_status"] == "active"
    assert (
        alice["stripe_subscription_id"] == se.SUBSCRIPTION
        and alice["stripe_customer_id"] == se.CUSTOMER
    )
    await worker.heartbeat([{"user_id": "alice", **HEALTHY}])
    assert (await until_state(plane, "alice", "running"))["server_id"] == worker.key_id


async def test_forged_and_duplicate_deliveries(plane: ControlPlane) -> None:
    await registered(plane)
    first = checkout("bob")
    status, body = await deliver(plane, first, tamper=True)
    assert status == 400 and body["error"]["code"] == "bad_signature"
    status, body = await deliver(plane, first)
    assert status == 200 and body["duplicate"] is False
    status, body = await deliver(plane, first)
    assert status == 200 and body["duplicate"] is True
    stale = se.encode(checkout("bob2"))
    async with plane.session.post(
        plane.url + "/v1/stripe/webhook",
        data=stale,
        headers={
            "Stripe-Signature": se.sign(
                stale, timestamp=int(asyncio.get_running_loop().time() * 0) + 1000
            )
        },
    ) as r:
        assert r.status == 400 and (await r.json())["error"]["code"] == "stale_event"
    await until_state(plane, "bob", "pending")  # checkout alone: known, awaiting its subscription
    status, users = await plane.admin("GET", "/v1/users")
    assert [u["user_id"] for u in users["users"]] == ["bob"]


async def test_out_of_order_deleted_before_created(plane: ControlPlane) -> None:
    await registered(plane)
    await deliver(plane, subscription("deleted", "canceled", created=2_000_000_000))
    await deliver(plane, subscription("created", "active", created=1_900_000_000))
    await deliver(plane, checkout("carol", created=1_800_000_000))
    carol = await until_state(plane, "carol", "deprovisioned")
    assert carol["billing_status"] == "deleted" and carol["server_id"] is None


async def test_unknown_price_is_surfaced(plane: ControlPlane) -> None:
    await registered(plane)
    await deliver(plane, checkout("dan"))
    await deliver(plane, subscription("created", "active", price="price_unknown_9"))
    await inbox_idle(plane)
    _, dan = await plane.admin("GET", "/v1/users/dan")
    assert dan["state"] == "pending" and "price_unknown_9" in dan["error"]
    _, evs = await plane.admin("GET", "/v1/events")
    assert any(e["kind"] == "billing_error" for e in evs["events"])


async def test_events_queued_across_a_restart_are_applied_once(
    control_factory: Callable[..., ControlPlane], tmp_path: Path
) -> None:
    plane = control_factory(
        stripe_webhook_secret=se.WEBHOOK_SECRET, plans={"default": DEFAULT_PLAN, "pro": PRO}
    )
    await plane.start()
    await registered(plane)
    await plane.stop()
    # Acknowledged while the control plane was down to its inbox alone: stored, not applied.
    store = Store(plane.settings.database_path)
    await store.open()
    inbox = StripeInbox(store, se.WEBHOOK_SECRET)
    for ev in (checkout("erin"), subscription("created", "active")):
        body = se.encode(ev)
        assert await inbox.receive(body, se.sign(body)) is True
    await store.close()
    await plane.start()
    erin = await until_state(plane, "erin", "provisioning")
    assert erin["billing_status"] == "active"
    _, evs = await plane.admin("GET", "/v1/events?limit=1000")
    assert (
        sum(1 for e in evs["events"] if e["kind"] == "user_created" and e["user_id"] == "erin") == 1
    )
    assert (
        sum(1 for e in evs["events"] if e["kind"] == "user_placed" and e["user_id"] == "erin") == 1
    )


async def test_events_that_keep_failing_are_listed(plane: ControlPlane) -> None:
    assert plane.app is not None
    from control.appkeys import INBOX

    inbox = plane.app[INBOX]
    # Stop the app's own processing so that only the broken apply below sees the event.
    for task in asyncio.all_tasks():
        if task.get_name() == "stripe-inbox":
            task.cancel()

    async def broken(fact: object) -> None:
        raise RuntimeError("apply is broken")

    body = se.encode(checkout("fay"))
    await inbox.receive(body, se.sign(body))
    for attempt in range(6):  # past the attempts after which an event counts as failing
        await inbox.process_due(broken, now=time.time() + 10**7 * (attempt + 1))
    _, listing = await plane.admin("GET", "/v1/events")
    (failing,) = listing["failing_webhooks"]
    assert (
        failing["type"] == "checkout.session.completed"
        and "apply is broken" in failing["last_error"]
    )


def _change(status: str, previous: str, created: int) -> dict[str, Any]:
    return se.event(
        "customer.subscription.updated",
        se.subscription(status=status),
        created=created,
        previous_attributes={"status": previous},
    )


@pytest.mark.parametrize(
    ("first", "then", "final"),
    [
        # A payment recovered: unpaid then active, in one second, delivered reversed.
        (("unpaid", "active"), ("active", "unpaid"), "provisioning"),
        # Failing further: past_due then unpaid; "active" is not simply preferred.
        (("past_due", "active"), ("unpaid", "past_due"), "suspended"),
        # Cancelled in the same second it was paid: the end wins whatever the order.
        (("active", "past_due"), ("canceled", "active"), "deprovisioned"),
    ],
)
async def test_changes_within_one_second_delivered_reversed_keep_the_later_state(
    plane: ControlPlane, first: tuple[str, str], then: tuple[str, str], final: str
) -> None:
    """Without STRIPE_SECRET_KEY nothing is re-fetched: the payload orders the two."""
    await registered(plane)
    second = int(time.time())
    await deliver(plane, checkout("gil", created=second - 60))
    await deliver(plane, subscription("created", "active", created=second - 60))
    await until_state(plane, "gil", "provisioning")
    earlier, later = _change(*first, created=second), _change(*then, created=second)
    # Stripe sent `earlier` first; it arrives (and is processed) after `later`.
    assert (await deliver(plane, later))[0] == 200
    assert (await deliver(plane, earlier))[0] == 200
    assert plane.app is not None
    # Whatever the background round took, one more round under the inbox's lock
    # leaves nothing due: no waiting on the clock.
    await plane.app[INBOX].process_due(plane.app[FLEET].apply_billing)
    _, gil = await plane.admin("GET", "/v1/users/gil")
    assert gil["state"] == final, gil
