"""The admin API: auth, users, servers, events, and the JSON error shape."""

from __future__ import annotations

from typing import Any

import pytest

from control.appkeys import FLEET
from tests.fixtures import ControlPlane
from tests.test_protocol import registered, server


@pytest.mark.parametrize("path", ["/v1/servers", "/v1/users", "/v1/events", "/v1/users/x"])
async def test_admin_api_needs_the_token(control: ControlPlane, path: str) -> None:
    async with control.session.get(control.url + path) as r:
        assert r.status == 401
        assert (await r.json())["error"]["code"] == "unauthorized"
    status, _body = await control.admin("GET", path, token="wrong-" + "x" * 40)
    assert status == 401


async def test_unknown_route_and_method_use_the_error_shape(control: ControlPlane) -> None:
    status, body = await control.admin("GET", "/v1/nothing-here")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await control.admin("PUT", "/v1/users")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"user_id": "ok", "subdomain": "www"}, 400),
        ({"user_id": "ok", "subdomain": "-bad"}, 400),
        ({"user_id": "ok", "subdomain": "UPPER"}, 400),
        ({"user_id": "bad id", "subdomain": "fine"}, 400),
        ({"user_id": "ok", "subdomain": "fine", "plan": "gold"}, 400),
        ({"user_id": "ok"}, 400),
        ({"user_id": 5, "subdomain": "fine"}, 400),
        ({"user_id": "ok", "subdomain": "fine", "extra": 1}, 400),
    ],
)
async def test_bad_user_bodies_are_400_and_create_nothing(
    control: ControlPlane, body: dict[str, object], code: int
) -> None:
    status, reply = await control.admin("POST", "/v1/users", body)
    assert status == code, reply
    assert reply["error"]["message"]
    _, listing = await control.admin("GET", "/v1/users")
    assert listing["users"] == []


async def test_user_lifecycle_and_conflicts(control: ControlPlane) -> None:
    status, user = await control.admin(
        "POST", "/v1/users", {"user_id": "erin", "subdomain": "erin"}
    )
    assert status == 201
    assert user["state"] == "pending" and user["server_id"] is None and user["plan"] == "default"
    status, body = await control.admin(
        "POST", "/v1/users", {"user_id": "erin", "subdomain": "other"}
    )
    assert status == 409 and body["error"]["code"] == "user_exists"
    status, body = await control.admin(
        "POST", "/v1/users", {"user_id": "fred", "subdomain": "erin"}
    )
    assert status == 409 and body["error"]["code"] == "subdomain_taken"
    # Capacity arrives: the pending user is placed on the new worker.
    worker = await registered(control)
    _, user = await control.admin("GET", "/v1/users/erin")
    assert user["state"] == "provisioning" and user["server_id"] == worker.key_id
    status, user = await control.admin("DELETE", "/v1/users/erin")
    assert status == 200 and user["state"] == "deprovisioned" and user["server_id"] is None
    status, _ = await control.admin("DELETE", "/v1/users/nobody")
    assert status == 404


async def test_placement_is_best_fit_and_respects_cordon(
    control: ControlPlane,
) -> None:
    a = await registered(control, "a")
    b = await registered(control, "b")
    status, srv = await control.admin("POST", f"/v1/servers/{a.key_id}/cordon")
    assert status == 200 and srv["cordoned"] is True
    for name in ("u1", "u2"):
        await control.admin("POST", "/v1/users", {"user_id": name, "subdomain": name})
    _, listing = await control.admin("GET", "/v1/users")
    assert {u["server_id"] for u in listing["users"]} == {b.key_id}
    await control.admin("POST", f"/v1/servers/{a.key_id}/uncordon")
    await control.admin("POST", "/v1/users", {"user_id": "u3", "subdomain": "u3"})
    _, u3 = await control.admin("GET", "/v1/users/u3")
    assert u3["server_id"] == b.key_id  # best fit: the fuller server that still has room
    srv_b = await server(control, b.key_id)
    assert srv_b["capacity"]["memory_mb"] == {"used": 3072, "total": 7680}
    assert srv_b["containers_desired"] == 3


async def test_user_stays_pending_when_nothing_fits(control: ControlPlane) -> None:
    await registered(control)  # 8192 MB less 512 reserved: room for seven 1024 MB users
    for i in range(8):
        await control.admin("POST", "/v1/users", {"user_id": f"p{i}", "subdomain": f"p{i}"})
    _, listing = await control.admin("GET", "/v1/users")
    states = sorted(u["state"] for u in listing["users"])
    assert states == ["pending"] + ["provisioning"] * 7


async def test_drain_cordons_and_unknown_server_is_404(control: ControlPlane) -> None:
    worker = await registered(control)
    status, srv = await control.admin("POST", f"/v1/servers/{worker.key_id}/drain")
    assert status == 200 and srv["draining"] is True and srv["cordoned"] is True
    status, body = await control.admin("POST", "/v1/servers/srv-nope/cordon")
    assert status == 404 and body["error"]["code"] == "not_found"


async def test_join_token_ttl_is_validated(control: ControlPlane) -> None:
    status, body = await control.admin("POST", "/v1/join-tokens", {"ttl_seconds": 5})
    assert status == 400
    status, body = await control.admin("POST", "/v1/join-tokens", {"ttl_seconds": "600"})
    assert status == 400
    status, body = await control.admin("POST", "/v1/join-tokens", {"ttl_seconds": 600})
    assert status == 201
    token_id, _, secret = body["token"].partition(".")
    assert 6 <= len(token_id) <= 16 and len(secret) >= 32
    assert body["expires_at"].endswith("Z")


async def test_events_are_listed_newest_first(control: ControlPlane) -> None:
    await control.admin("POST", "/v1/users", {"user_id": "g", "subdomain": "g"})
    await registered(control)
    _, body = await control.admin("GET", "/v1/events?limit=2")
    assert len(body["events"]) == 2
    ids = [e["id"] for e in body["events"]]
    assert ids == sorted(ids, reverse=True)
    _, older = await control.admin("GET", f"/v1/events?before={ids[-1]}")
    assert all(e["id"] < ids[-1] for e in older["events"])
    status, _ = await control.admin("GET", "/v1/events?limit=abc")
    assert status == 400


async def test_operator_move_is_make_before_break(control: ControlPlane) -> None:
    a = await registered(control, "a")
    b = await registered(control, "b")
    await control.admin("POST", f"/v1/servers/{b.key_id}/cordon")
    await control.admin("POST", "/v1/users", {"user_id": "mo", "subdomain": "mo"})
    await control.admin("POST", f"/v1/servers/{b.key_id}/uncordon")
    status, body = await control.admin("POST", "/v1/users/mo/move", {"server_id": b.key_id})
    assert status == 200 and body["server_id"] == b.key_id and body["moving_from"] == a.key_id
    # Both run it until the new container is healthy.
    assert [c["user_id"] for c in (await a.assignments()).body["containers"]] == ["mo"]
    assert [c["user_id"] for c in (await b.assignments()).body["containers"]] == ["mo"]
    status, body = await control.admin("POST", "/v1/users/mo/move", {})
    assert status == 409 and body["error"]["code"] == "move_in_progress"
    healthy = {
        "user_id": "mo",
        "state": "running",
        "health": "healthy",
        "image_id": "x",
        "started_at": "",
        "restart_count": 0,
        "error": None,
    }
    await b.heartbeat([healthy])
    assert (await a.assignments()).body["containers"] == []
    _, mo = await control.admin("GET", "/v1/users/mo")
    assert mo["state"] == "running" and mo["moving_from"] is None
    status, body = await control.admin("POST", "/v1/users/mo/move", {"server_id": "srv-nope"})
    assert status == 409 and body["error"]["code"] == "target_unavailable"


async def test_a_new_user_is_created_and_placed_in_one_transaction(
    control: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One wait for the write lock between the request and its worker's wake-up, not
    two (issue 16: a wake-up at 10k workers is mostly write-lock waits)."""
    worker = await registered(control)
    assert control.app is not None
    store = control.app[FLEET].store
    writes: list[str] = []
    write = store.write

    async def counted(fn: Any) -> Any:
        writes.append(f"{fn.__module__}:{fn.__qualname__}")
        return await write(fn)

    monkeypatch.setattr(store, "write", counted)
    status, _ = await control.admin("POST", "/v1/users", {"user_id": "olga", "subdomain": "olga"})
    assert status == 201
    # (The autoscaler's run, which the new user also triggers, writes beside it: its
    # scale-up, its volume and backup steps and, finding nothing waiting, its scale-down.)
    theirs = ("control.capacity.", "control.volumes.")
    assert [w for w in writes if not w.startswith(theirs)] == [
        "control.workers.assignments:commit.<locals>.apply"
    ]
    _, user = await control.admin("GET", "/v1/users/olga")
    assert user["state"] == "provisioning" and user["server_id"] == worker.key_id
    # A refused creation places nothing and writes nothing.
    status, _ = await control.admin("POST", "/v1/users", {"user_id": "olga", "subdomain": "o2"})
    assert status == 409
