"""The buyer's agent started while they are on the checkout page (issue 12,
control/users/prestart.py): the real control plane on 127.0.0.1 with real SQLite, the
real `stripe` library against the fake Stripe API, and a fake worker speaking the real
protocol. Sign-up places a provisional user on a live server; the payment adopts it
with the same spec hash; off, at the cap or with no room, nothing is started; expiry,
release and PRESTART_TTL withdraw it with no retention, and a later payment still
creates the user; it is nobody's agent before it is paid for."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from control.appkeys import FLEET, INBOX, STORE
from control.db.store import Row
from control.portal import checkouts
from control.users import prestart
from tests.fakes.stripe_api import StripeFake
from tests.fixtures import ControlPlane
from tests.portal_signup import call, pay, portal_plane, session_of, sign_up, status_path
from tests.test_protocol import registered
from tests.worker import FakeWorker

DAY = 86400.0
TTL = 15 * 60.0


@pytest.mark.parametrize(
    ("enabled", "live", "limit", "volumes", "expected"),
    [
        (True, 0, 3, False, True),
        (True, 2, 3, False, True),
        (True, 3, 3, False, False),  # at the cap
        (True, 0, 0, False, False),  # PRESTART_MAX=0
        (False, 0, 3, False, False),  # PRESTART off
        (True, 0, 3, True, False),  # a per-user volume is never made for a non-payer
    ],
)
def test_may_start(enabled: bool, live: int, limit: int, volumes: bool, expected: bool) -> None:
    assert prestart.may_start(enabled, live, limit, volumes) is expected


NOW = 10_000.0


@pytest.mark.parametrize(
    ("state", "created", "checkout", "expires", "why"),
    [
        ("running", NOW - 60, "open", NOW + 60, None),
        ("provisioning", NOW - 60, "open", NOW + 60, None),
        ("running", NOW - 60, None, None, "gone"),
        ("running", NOW - 60, "expired", NOW + 60, "released"),  # came back unpaid
        ("running", NOW - 60, "open", NOW, "expired"),  # past its hold
        ("running", NOW - TTL, "open", NOW + 60, "not paid within 15 minutes"),
        ("pending", NOW - 60, "open", NOW + 60, "never waits"),  # lost its server
    ],
)
def test_withdraw_reason(
    state: str, created: float, checkout: str | None, expires: float | None, why: str | None
) -> None:
    got = prestart.withdraw_reason(state, created, checkout, expires, NOW, TTL)
    assert (got is None) if why is None else (got is not None and why in got)


def plane_with(
    control_factory: Callable[..., ControlPlane], stripe_fake: StripeFake, **overrides: Any
) -> ControlPlane:
    # A worker is never declared dead while a test's clock runs ahead of its heartbeats.
    return portal_plane(control_factory, stripe_fake, dead_after=30 * DAY, **overrides)


@pytest.fixture
async def plane(
    control_factory: Callable[..., ControlPlane], stripe_fake: StripeFake
) -> ControlPlane:
    cp = plane_with(control_factory, stripe_fake)
    await cp.start()
    return cp


async def user(plane: ControlPlane, user_id: str) -> Row | None:
    assert plane.app is not None
    return await plane.app[STORE].fetch_one("SELECT * FROM users WHERE id = ?", (user_id,))


async def checkout_of(plane: ControlPlane, stripe_fake: StripeFake) -> tuple[str, str]:
    """Signs alice up; (her user id, her Checkout Session id)."""
    reply = await sign_up(plane)
    assert reply.status == 201, reply.body
    session_id = session_of(stripe_fake, reply.body["url"])
    return stripe_fake.checkout.requests[session_id]["client_reference_id"], session_id


async def containers(worker: FakeWorker) -> dict[str, str]:
    """user id -> spec hash of the worker's desired set."""
    reply = await worker.assignments()
    assert reply.status == 200, reply.body
    return {c["user_id"]: c["spec_hash"] for c in reply.body["containers"]}


async def sweep(plane: ControlPlane, now: float) -> None:
    assert plane.app is not None
    await plane.app[FLEET].sweep(now)


async def test_sign_up_starts_the_agent_and_the_payment_keeps_it(
    plane: ControlPlane, stripe_fake: StripeFake
) -> None:
    worker = await registered(plane)
    user_id, session_id = await checkout_of(plane, stripe_fake)
    row = await user(plane, user_id)
    assert row is not None and row["state"] == "provisioning"
    assert row["server_id"] == worker.key_id and row["subdomain"] == "alice"
    assert row["plan"] == "pro" and row["billing_status"] == "checkout"
    assert row["gateway_token_ciphertext"]  # encrypted like every user's
    before = (await containers(worker))[user_id]
    status, shown = await plane.admin("GET", f"/v1/users/{user_id}")
    assert status == 200 and shown["billing_state"] == "checkout"
    await pay(plane, stripe_fake, session_id)
    paid = await user(plane, user_id)
    assert paid is not None and paid["billing_status"] == "active"
    assert paid["stripe_subscription_id"] and paid["stripe_customer_id"]
    assert paid["state"] == "provisioning" and paid["server_id"] == worker.key_id
    assert (await containers(worker))[user_id] == before  # no restart: same spec
    status, shown = await plane.admin("GET", f"/v1/users/{user_id}")
    assert shown["billing_state"] == "run"
    # Now the status page follows the agent, and its checkout is paid.
    page = status_path(stripe_fake, session_id).replace("/portal/status/", "/portal/api/status/")
    progress = await call(plane, "GET", page)
    assert progress.status == 200 and progress.body["step"] == "starting", progress.body
    assert plane.app is not None
    row = await plane.app[STORE].fetch_one(
        "SELECT state FROM checkouts WHERE user_id = ?", (user_id,)
    )
    assert row is not None and row["state"] == "paid"


async def test_nothing_is_offered_before_the_payment(
    plane: ControlPlane, stripe_fake: StripeFake
) -> None:
    worker = await registered(plane)
    user_id, session_id = await checkout_of(plane, stripe_fake)
    await worker.heartbeat([{"user_id": user_id, **_healthy()}])
    row = await user(plane, user_id)
    assert row is not None and row["state"] == "running"
    status, body = await plane.admin("POST", f"/v1/users/{user_id}/signin-link")
    assert status == 409 and body["error"]["code"] == "not_paid"
    assert plane.app is not None
    assert await checkouts.users_with_email(plane.app[STORE], "alice@example.com") == []
    # The status page (its token is in the cancel URL too) shows no agent, opens none.
    page = status_path(stripe_fake, session_id).replace("/portal/status/", "/portal/api/status/")
    shown = await call(plane, "GET", page)
    assert shown.status == 200 and shown.body["url"] is None and shown.body["step"] != "ready"
    opened = await call(plane, "POST", page + "/open")
    assert opened.status == 409
    # The checkout stays open (not paid by its provisional user), so it can be released.
    row = await plane.app[STORE].fetch_one(
        "SELECT state FROM checkouts WHERE user_id = ?", (user_id,)
    )
    assert row is not None and row["state"] == "open"


def _healthy() -> dict[str, Any]:
    return {"state": "running", "health": "healthy", "image_id": "x", "started_at": ""}


@pytest.mark.parametrize(
    "overrides", [{"prestart": False}, {"prestart_max": 0}], ids=["off", "cap"]
)
async def test_off_or_at_the_cap_the_payment_takes_the_ordinary_path(
    control_factory: Callable[..., ControlPlane], stripe_fake: StripeFake, overrides: Any
) -> None:
    plane = plane_with(control_factory, stripe_fake, **overrides)
    await plane.start()
    worker = await registered(plane)
    user_id, session_id = await checkout_of(plane, stripe_fake)
    assert await user(plane, user_id) is None
    await pay(plane, stripe_fake, session_id)
    row = await user(plane, user_id)
    assert row is not None and row["billing_status"] == "active"
    assert user_id in await containers(worker)


async def test_the_cap_counts_live_provisional_users(
    control_factory: Callable[..., ControlPlane], stripe_fake: StripeFake
) -> None:
    plane = plane_with(control_factory, stripe_fake, prestart_max=1)
    await plane.start()
    await registered(plane)
    first, _ = await checkout_of(plane, stripe_fake)
    reply = await sign_up(plane, subdomain="bob", email="bob@example.com")
    assert reply.status == 201
    second = stripe_fake.checkout.requests[session_of(stripe_fake, reply.body["url"])][
        "client_reference_id"
    ]
    assert await user(plane, first) is not None
    assert await user(plane, second) is None


async def test_no_room_now_starts_nothing(plane: ControlPlane, stripe_fake: StripeFake) -> None:
    user_id, session_id = await checkout_of(plane, stripe_fake)  # no worker at all
    assert await user(plane, user_id) is None
    worker = await registered(plane)
    await pay(plane, stripe_fake, session_id)
    assert user_id in await containers(worker)


async def withdrawn(plane: ControlPlane, worker: FakeWorker, user_id: str, at: float) -> None:
    """Withdrawn: not in the set, its volumes in the purge list, its name free; then,
    once the worker applied that set, forgotten (no retention, no hold)."""
    row = await user(plane, user_id)
    assert row is not None and row["state"] == "deprovisioned" and row["hold"] is None
    reply = await worker.assignments()
    assert user_id not in {c["user_id"] for c in reply.body["containers"]}
    assert reply.body["purge"] == [user_id]
    assert row["subdomain"] != "alice"
    await worker.heartbeat(generation=reply.body["generation"])
    await sweep(plane, at)
    assert await user(plane, user_id) is None
    # The clock ran ahead of the worker's heartbeats: it reports again, and is live.
    assert (await worker.heartbeat(generation=reply.body["generation"])).status == 200


@pytest.mark.parametrize("how", ["released", "expired", "ttl"])
async def test_unpaid_it_is_withdrawn_and_a_later_payment_still_starts_it(
    plane: ControlPlane, stripe_fake: StripeFake, how: str
) -> None:
    worker = await registered(plane)
    user_id, session_id = await checkout_of(plane, stripe_fake)
    assert user_id in await containers(worker)
    at = time.time()
    if how == "released":
        page = status_path(stripe_fake, session_id)
        back = await call(
            plane, "POST", page.replace("/portal/status/", "/portal/api/status/") + "/cancel"
        )
        assert back.status == 200, back.body
    elif how == "expired":
        assert plane.app is not None
        hold = await plane.app[STORE].fetch_one(
            "SELECT expires_at FROM checkouts WHERE user_id = ?", (user_id,)
        )
        assert hold is not None
        at = float(hold["expires_at"])
    else:
        at += TTL
    await sweep(plane, at)
    await withdrawn(plane, worker, user_id, at)
    await pay(plane, stripe_fake, session_id)  # e.g. paid in the session's last moment
    row = await user(plane, user_id)
    assert row is not None and row["billing_status"] == "active"
    assert user_id in await containers(worker)


async def test_a_released_name_can_be_signed_up_for_again_at_once(
    plane: ControlPlane, stripe_fake: StripeFake
) -> None:
    await registered(plane)
    first, session_id = await checkout_of(plane, stripe_fake)
    page = status_path(stripe_fake, session_id).replace("/portal/status/", "/portal/api/status/")
    assert (await call(plane, "POST", page + "/cancel")).status == 200
    # No sweep in between: the sign-up itself withdraws the provisional user first.
    second, _ = await checkout_of(plane, stripe_fake)
    gone, again = await user(plane, first), await user(plane, second)
    assert gone is not None and gone["state"] == "deprovisioned"
    assert again is not None and again["subdomain"] == "alice" and again["state"] == "provisioning"


async def test_a_payment_while_it_is_being_purged_is_retried_then_creates_the_user(
    plane: ControlPlane, stripe_fake: StripeFake
) -> None:
    worker = await registered(plane)
    user_id, session_id = await checkout_of(plane, stripe_fake)
    at = time.time() + TTL
    await sweep(plane, at)  # withdrawn; its worker has not purged it yet
    await pay(plane, stripe_fake, session_id)
    row = await user(plane, user_id)
    assert row is not None and row["state"] == "deprovisioned"  # not revived half-purged
    assert plane.app is not None
    store = plane.app[STORE]
    failed = await store.fetch_all("SELECT status, last_error FROM stripe_events")
    assert failed and all(r["status"] == "pending" for r in failed)
    assert all("withdrawn unpaid" in r["last_error"] for r in failed)
    reply = await worker.assignments()
    await worker.heartbeat(generation=reply.body["generation"])
    await sweep(plane, at)
    assert await user(plane, user_id) is None
    await worker.heartbeat(generation=reply.body["generation"])  # live again
    await plane.app[INBOX].process_due(plane.app[FLEET].apply_billing, now=at + DAY)
    row = await user(plane, user_id)
    assert row is not None and row["billing_status"] == "active" and row["subdomain"] == "alice"
    assert user_id in await containers(worker)
