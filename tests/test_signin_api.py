"""Sign-in links: admin only, a ticket the worker's verifier accepts for that user and
no other, on the URL the access reply gives; 409 without a gate or a container."""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import pytest

from control.settings import profiles
from shared import signin
from tests.fixtures import ControlPlane
from tests.test_protocol import registered


@pytest.fixture
async def plane(control_factory: Callable[..., ControlPlane]) -> ControlPlane:
    cp = control_factory(tenant_profile=profiles.load("openclaw"))
    await cp.start()
    return cp


async def key_of(plane: ControlPlane, user_id: str) -> str:
    _, access = await plane.admin("GET", f"/v1/users/{user_id}/access")
    return signin.signin_key(access["token"])


async def test_link_carries_a_ticket_for_that_user_only(plane: ControlPlane) -> None:
    await registered(plane)
    for name in ("alice", "bob"):
        await plane.admin("POST", "/v1/users", {"user_id": name, "subdomain": name})
    status, link = await plane.admin("POST", "/v1/users/alice/signin-link")
    assert status == 201, link
    _, access = await plane.admin("GET", "/v1/users/alice/access")
    url = urlsplit(link["url"])
    assert f"{url.scheme}://{url.netloc}" == access["url"]
    assert url.path == "/_clawfleet/signin"
    (ticket,) = parse_qs(url.query)["ticket"]
    now = time.time()
    alice, bob = await key_of(plane, "alice"), await key_of(plane, "bob")
    assert signin.check_ticket(alice, "alice", ticket, now) is not None
    assert signin.check_ticket(bob, "alice", ticket, now) is None  # another user's key
    assert signin.check_ticket(alice, "bob", ticket, now) is None
    assert signin.check_ticket(alice, "alice", ticket, now + 301) is None  # 5 minutes
    _, again = await plane.admin("POST", "/v1/users/alice/signin-link")
    assert again["url"] != link["url"]  # a fresh nonce each time
    await plane.admin("POST", "/v1/users/alice/rotate-token")
    assert signin.check_ticket(await key_of(plane, "alice"), "alice", ticket, now) is None


async def test_link_needs_admin_a_user_and_a_container(plane: ControlPlane) -> None:
    status, _ = await plane.admin("POST", "/v1/users/alice/signin-link", token="x" * 40)
    assert status == 401
    status, _ = await plane.admin("POST", "/v1/users/ghost/signin-link")
    assert status == 404
    await plane.admin("POST", "/v1/users", {"user_id": "alice", "subdomain": "alice"})
    status, reply = await plane.admin("POST", "/v1/users/alice/signin-link")  # no worker
    assert status == 409 and reply["error"]["code"] == "not_running"


async def test_no_gate_no_link(control: ControlPlane) -> None:
    await registered(control)
    await control.admin("POST", "/v1/users", {"user_id": "alice", "subdomain": "alice"})
    status, reply = await control.admin("POST", "/v1/users/alice/signin-link")
    assert status == 409 and reply["error"]["code"] == "signin_off"


async def test_local_demo_urls_use_the_router_port(
    control_factory: Callable[..., ControlPlane],
) -> None:
    plane = control_factory(
        tenant_profile=profiles.load("openclaw"), local_router_address="127.0.0.1:8000"
    )
    await plane.start()
    await plane.admin("POST", "/v1/users", {"user_id": "alice", "subdomain": "alice"})
    _, access = await plane.admin("GET", "/v1/users/alice/access")
    assert access["url"] == "http://alice.clawfleet.localhost:8000"
