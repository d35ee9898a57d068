"""The status page's JSON through the real control plane: payment confirmed (only by
Stripe's signed webhook) → placing → starting → ready, a new server's estimate, the
button's one-time sign-in link, and nothing but the buyer's own progress."""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import aiosqlite
import pytest

from control.appkeys import STORE
from control.portal import checkouts
from control.portal.state import PORTAL
from control.workers import servers
from shared import signin
from tests.fakes.stripe_api import StripeFake
from tests.fixtures import ControlPlane
from tests.portal_signup import (
    HEALTHY,
    call,
    pay,
    portal_plane,
    session_of,
    sign_up,
    status_path,
)
from tests.test_protocol import registered

KEYS = {
    "step",
    "steps",
    "message",
    "estimate_seconds",
    "estimate_basis",
    "subdomain",
    "url",
    "poll_seconds",
}


@pytest.fixture
async def plane(
    control_factory: Callable[..., ControlPlane], stripe_fake: StripeFake
) -> ControlPlane:
    cp = portal_plane(control_factory, stripe_fake, portal_boot_seconds=300)
    await cp.start()
    return cp


async def signed_up(plane: ControlPlane, stripe_fake: StripeFake, name: str = "alice") -> str:
    """The session id of a new sign-up."""
    reply = await sign_up(plane, name, f"{name}@example.com")
    assert reply.status == 201, reply.body
    return session_of(stripe_fake, reply.body["url"])


async def status(plane: ControlPlane, stripe_fake: StripeFake, session_id: str) -> dict:  # type: ignore[type-arg]
    path = status_path(stripe_fake, session_id).replace("/portal/status/", "/portal/api/status/")
    reply = await call(plane, "GET", path)
    assert reply.status == 200, reply.body
    assert set(reply.body) == KEYS  # nothing else: no user id, no server
    return dict(reply.body)


async def test_progress_to_ready_then_open_signed_in(
    plane: ControlPlane, stripe_fake: StripeFake
) -> None:
    session_id = await signed_up(plane, stripe_fake)
    shown = await status(plane, stripe_fake, session_id)
    assert shown["step"] == "payment" and shown["url"] is None
    assert shown["poll_seconds"] == 2.0
    assert shown["steps"] == ["payment", "placing", "starting", "ready"]
    page = await call(plane, "GET", status_path(stripe_fake, session_id))
    assert page.status == 200 and "status.js" in page.body
    worker = await registered(plane)
    await pay(plane, stripe_fake, session_id)
    shown = await status(plane, stripe_fake, session_id)
    assert shown["step"] == "starting", shown
    assert shown["poll_seconds"] == 0.5  # the answer is due any moment now
    user_id = stripe_fake.checkout.requests[session_id]["client_reference_id"]
    opened = await call(
        plane,
        "POST",
        status_path(stripe_fake, session_id).replace("/portal/status/", "/portal/api/status/")
        + "/open",
    )
    assert opened.status == 409 and opened.body["error"]["code"] == "not_running"
    await worker.heartbeat([{"user_id": user_id, **HEALTHY}])
    shown = await status(plane, stripe_fake, session_id)
    assert shown["step"] == "ready" and shown["subdomain"] == "alice"
    assert shown["url"] == f"https://alice.{plane.settings.base_domain}"
    api = status_path(stripe_fake, session_id).replace("/portal/status/", "/portal/api/status/")
    opened = await call(plane, "POST", api + "/open")
    assert opened.status == 201
    url = urlsplit(opened.body["url"])
    assert f"{url.scheme}://{url.netloc}" == shown["url"] and url.path == "/_clawfleet/signin"
    _, access = await plane.admin("GET", f"/v1/users/{user_id}/access")
    (ticket,) = parse_qs(url.query)["ticket"]
    key = signin.signin_key(access["token"])
    assert signin.check_ticket(key, user_id, ticket, time.time()) is not None
    again = await call(plane, "POST", api + "/open")
    assert again.body["url"] != opened.body["url"]  # a fresh one-time link each time
    assert plane.app is not None
    store = plane.app[STORE]
    assert await checkouts.users_with_email(store, "ALICE@example.com") == [user_id]
    row = await store.fetch_one("SELECT state FROM checkouts WHERE user_id = ?", (user_id,))
    assert row is not None and row["state"] == "paid"


async def test_a_new_server_being_prepared_has_an_estimate(
    plane: ControlPlane, stripe_fake: StripeFake
) -> None:
    session_id = await signed_up(plane, stripe_fake)
    await pay(plane, stripe_fake, session_id)
    shown = await status(plane, stripe_fake, session_id)
    assert shown["step"] == "placing" and shown["estimate_seconds"] is None
    assert "Finding room" in shown["message"]
    assert plane.app is not None
    created = time.time() - 60

    async def being_prepared(conn: aiosqlite.Connection) -> None:
        await servers.insert_created(conn, "srv-new", "cf-new", "local", ("cx22", "local"), created)
        # Its create confirmed: unconfirmed, the autoscaler would create it again, and the
        # local provider would start a real agent that outlives the test.
        await servers.confirm_created(conn, "srv-new", "cf-new", None, ("cx22", "local"), created)

    await plane.app[STORE].write(being_prepared)
    shown = await status(plane, stripe_fake, session_id)
    assert shown["step"] == "placing" and "new server is being prepared" in shown["message"]
    assert 230 <= shown["estimate_seconds"] <= 240  # PORTAL_BOOT_SECONDS=300, 60 s ago
    assert "setting" in shown["estimate_basis"]
    plane.app[PORTAL].clock = lambda: created + 400
    shown = await status(plane, stripe_fake, session_id)
    assert shown["estimate_seconds"] == 0 and "longer than usual" in shown["message"]


async def test_each_page_shows_its_own_checkout_only(
    plane: ControlPlane, stripe_fake: StripeFake
) -> None:
    alice = await signed_up(plane, stripe_fake, "alice")
    bob = await signed_up(plane, stripe_fake, "bob")
    assert (await status(plane, stripe_fake, alice))["subdomain"] == "alice"
    assert (await status(plane, stripe_fake, bob))["subdomain"] == "bob"
    unknown = await call(plane, "GET", "/portal/api/status/" + "A" * 43)
    assert unknown.status == 404
    for bad in ("A" * 42, "A" * 44, "." * 43):
        assert (await call(plane, "GET", f"/portal/api/status/{bad}")).status == 404
    # The token is only on the success URL Stripe was given; the reply never carries it.
    token = status_path(stripe_fake, alice).rsplit("/", 1)[-1]
    reply = await sign_up(plane, "carol", "carol@example.com")
    assert token not in str(reply.body)


async def test_an_unpaid_checkout_expires_and_an_old_link_stops(
    plane: ControlPlane, stripe_fake: StripeFake
) -> None:
    session_id = await signed_up(plane, stripe_fake)
    assert plane.app is not None
    minutes = plane.settings.portal_checkout_minutes
    later = time.time() + minutes * 60 + checkouts.HOLD_GRACE + 1
    plane.app[PORTAL].clock = lambda: later
    shown = await status(plane, stripe_fake, session_id)
    assert shown["step"] == "expired" and "Nothing was charged" in shown["message"]
    available = await call(plane, "GET", "/portal/api/availability", params={"subdomain": "alice"})
    assert available.body["available"] is True
    plane.app[PORTAL].clock = lambda: time.time() + plane.settings.portal_status_hours * 3600
    path = status_path(stripe_fake, session_id).replace("/portal/status/", "/portal/api/status/")
    gone = await call(plane, "GET", path)
    assert gone.status == 410 and gone.body["error"]["code"] == "link_expired"
