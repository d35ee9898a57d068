"""Capacity trust and churn (issue 9): capacity comes from what the control plane
knows; retired workers stay retired; placement runs whenever room appears; servers
holding users' data are kept. Against the real app, SQLite file and fake Hetzner API.

Time is injected, never waited for: liveness sweeps run at a given `now`, and
deadlines are moved into the past in the database.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from control.appkeys import FLEET
from control.capacity.providers.local import agent_env_from_user_data
from control.fleet import Fleet
from tests.fakes.hetzner import HetznerFake
from tests.fixtures import ControlPlane
from tests.test_autoscaler import (
    Start,
    add_users,
    boot,
    cloud,  # noqa: F401 - the fixture, taken as a parameter
    db,
    event_kinds,
    run,
    servers,
)
from tests.test_protocol import registered, server, token
from tests.worker import FakeWorker

CPX22 = {"cpus": 2, "memory_mb": 4096, "disk_gb": 80}  # the fake's cpx22
RETIRED = ("dead", "deleting", "deleted")  # the autoscaler may delete a dead one at any time
HUGE = {"cpus": 1024, "memory_mb": 1024 * 1024, "disk_gb": 100_000}


def fleet(control: ControlPlane) -> Fleet:
    assert control.app is not None
    return control.app[FLEET]


async def user(control: ControlPlane, user_id: str) -> dict[str, Any]:
    status, body = await control.admin("GET", f"/v1/users/{user_id}")
    assert status == 200, body
    return body


async def create_user(control: ControlPlane, user_id: str) -> dict[str, Any]:
    status, body = await control.admin(
        "POST", "/v1/users", {"user_id": user_id, "subdomain": user_id}
    )
    assert status == 201, body
    return body


async def join(control: ControlPlane, resources: dict[str, int], **stated: int) -> FakeWorker:
    worker = FakeWorker.with_token(control.url, control.session, await token(control, **stated))
    reply = await worker.register("joined", resources=resources)
    assert reply.status == 201, reply.body
    return worker


def created_worker(control: ControlPlane, fake: HetznerFake, index: int = -1) -> FakeWorker:
    """The agent on a created server, holding the bootstrap token of its user data."""
    env = agent_env_from_user_data(fake.create_requests[index]["user_data"])
    return FakeWorker.with_token(control.url, control.session, env["BOOTSTRAP_TOKEN"])


# --- 1. capacity comes from what the control plane knows -----------------------------
async def test_created_server_is_held_to_its_type_and_flagged_when_it_claims_more(
    cloud: Start,  # noqa: F811 - the imported fixture
    hetzner_fake: HetznerFake,
) -> None:
    control = await cloud()
    await add_users(control, "ann")
    await run(control)
    worker = created_worker(control, hetzner_fake)
    assert (await worker.register(resources=HUGE)).status == 201
    srv = await server(control, worker.key_id)
    # Stored capacity is the type's (less the reserve), never the claim.
    assert srv["capacity"]["memory_mb"]["total"] == 4096 - 512
    assert srv["capacity"]["cpus"]["total"] == 2 - 0.25
    assert srv["known"] == CPX22 and srv["capacity_source"] == "server type cpx22"
    assert srv["overclaim"].startswith("claims more than it has: cpus 1024 (has 2)")
    assert srv["cordoned"] is True
    assert "worker_overclaim" in await event_kinds(control)
    assert (await user(control, "ann"))["state"] == "pending"  # not given to the liar


async def test_joined_server_is_held_to_what_the_operator_stated(control: ControlPlane) -> None:
    liar = await join(control, HUGE, cpus=4, memory_mb=8192, disk_gb=80)
    honest = await join(
        control, {"cpus": 4, "memory_mb": 7900, "disk_gb": 78}, cpus=4, memory_mb=8192
    )
    lie, truth = await server(control, liar.key_id), await server(control, honest.key_id)
    assert lie["capacity"]["memory_mb"]["total"] == 8192 - 512
    assert lie["overclaim"] is not None and lie["cordoned"] is True
    # Less than stated is believed (the kernel keeps some memory); an unstated disk is
    # held to its first claim.
    assert truth["capacity"]["memory_mb"]["total"] == 7900 - 512 and truth["overclaim"] is None
    assert truth["known"] == {"cpus": 4, "memory_mb": 8192, "disk_gb": 78}
    assert (
        truth["capacity_source"] == "stated on the join token; disk_gb as claimed at registration"
    )
    await create_user(control, "bea")
    assert (await user(control, "bea"))["server_id"] == honest.key_id


async def test_heartbeat_claiming_more_is_clamped_flagged_and_gets_no_users(
    control: ControlPlane,
) -> None:
    """The reported attack: a registered worker heartbeats 1024 CPUs / 1 TB."""
    worker = await registered(control)  # nothing stated: held to its registration claim
    worker.resources = HUGE
    assert (await worker.heartbeat()).status == 200
    srv = await server(control, worker.key_id)
    assert srv["capacity"]["memory_mb"]["total"] == 8192 - 512  # not a terabyte
    assert srv["capacity"]["cpus"]["total"] == 4 - 0.25
    assert srv["overclaim"] and srv["cordoned"] is True
    await create_user(control, "cid")
    assert (await user(control, "cid"))["state"] == "pending"
    # Flagged once: the next lie records no second event.
    assert (await worker.heartbeat()).status == 200
    _, body = await control.admin("GET", "/v1/events?limit=1000")
    assert [e["kind"] for e in body["events"]].count("worker_overclaim") == 1
    # The operator checks the worker and uncordons it: the flag clears and placement runs.
    worker.resources = {"cpus": 4, "memory_mb": 8192, "disk_gb": 80}
    assert (await worker.heartbeat()).status == 200
    _, srv = await control.admin("POST", f"/v1/servers/{worker.key_id}/uncordon")
    assert srv["overclaim"] is None and srv["cordoned"] is False
    assert (await user(control, "cid"))["server_id"] == worker.key_id


async def test_join_token_resources_are_validated(control: ControlPlane) -> None:
    for bad in ({"cpus": 0}, {"memory_mb": -1}, {"disk_gb": 2**63}, {"cpus": "4"}):
        status, body = await control.admin("POST", "/v1/join-tokens", bad)
        assert status == 400, (bad, body)


# --- 2. a dead, deleted or retired worker never takes users again ------------------
async def test_dead_worker_stays_dead_whatever_it_sends(control: ControlPlane) -> None:
    tok = await token(control)
    worker = FakeWorker.with_token(control.url, control.session, tok)
    assert (await worker.register()).status == 201
    f = fleet(control)
    await f.sweep(now=time.time() + control.settings.dead_after + 1)
    assert (await server(control, worker.key_id))["status"] in RETIRED
    # Heartbeat: refused, and nothing changes.
    reply = await worker.heartbeat()
    assert reply.status == 403 and reply.body["error"]["code"] == "worker_revoked"
    # Liveness: a dead worker is terminal even with a fresh heartbeat on record.
    await asyncio.to_thread(
        db,
        control,
        "UPDATE servers SET last_heartbeat = ? WHERE id = ?",
        time.time(),
        worker.key_id,
    )
    await f.sweep()
    assert (await server(control, worker.key_id))["status"] in RETIRED
    # Registration: its token is spent.
    reply = await FakeWorker.with_token(control.url, control.session, tok).register()
    assert reply.status == 401 and reply.body["error"]["code"] == "token_used"
    # Placement never picks it.
    await create_user(control, "dee")
    assert (await user(control, "dee"))["state"] == "pending"
    assert (await server(control, worker.key_id))["status"] in RETIRED


async def test_deleted_worker_is_refused_and_takes_no_users(
    cloud: Start,  # noqa: F811 - the imported fixture
    hetzner_fake: HetznerFake,
) -> None:
    control = await cloud(warm_headroom=1)
    worker = await boot(control, hetzner_fake)
    await control.admin("POST", f"/v1/servers/{worker.key_id}/drain")
    await run(control)
    assert (await server(control, worker.key_id))["status"] == "deleted"
    reply = await worker.heartbeat()
    assert reply.status == 403 and reply.body["error"]["code"] == "worker_revoked"
    assert (await worker.assignments()).status == 403
    await add_users(control, "eve")
    assert (await server(control, worker.key_id))["status"] == "deleted"
    assert (await user(control, "eve"))["server_id"] != worker.key_id


# --- 3. a retired server's bootstrap token is revoked ------------------------------
async def test_server_deleted_at_provision_timeout_cannot_register(
    cloud: Start,  # noqa: F811 - the imported fixture
    hetzner_fake: HetznerFake,
) -> None:
    control = await cloud()
    await add_users(control, "fay")
    await run(control)
    (srv,) = await servers(control)
    await asyncio.to_thread(
        db, control, "UPDATE servers SET create_confirmed_at = ?", time.time() - 10_000
    )
    await run(control)  # deleted at PROVISION_TIMEOUT, and a replacement created
    assert (await server(control, srv["id"]))["status"] == "deleted"
    late = created_worker(control, hetzner_fake, index=0)  # the first server's user data
    reply = await late.register(resources=CPX22)
    assert reply.status == 401 and reply.body["error"]["code"] == "token_revoked"
    assert (await server(control, srv["id"]))["status"] == "deleted"
    assert (await user(control, "fay"))["server_id"] != srv["id"]


async def test_register_refuses_a_server_that_is_not_provisioning(
    cloud: Start,  # noqa: F811 - the imported fixture
    hetzner_fake: HetznerFake,
) -> None:
    """Even with a token nobody revoked (a path that forgot to), a retired server
    does not come back."""
    control = await cloud()
    await add_users(control, "gil")
    await run(control)
    (srv,) = await servers(control)
    for status in ("dead", "deleting", "deleted", "active"):
        await asyncio.to_thread(
            db, control, "UPDATE servers SET status = ? WHERE id = ?", status, srv["id"]
        )
        reply = await created_worker(control, hetzner_fake).register(resources=CPX22)
        assert reply.status == 403, reply.body
        assert reply.body["error"]["code"] == "server_not_provisioning"
        assert (await server(control, srv["id"]))["status"] == status


# --- 4. placement runs whenever room may have appeared -----------------------------
async def test_user_created_while_the_worker_was_unhealthy_is_placed_when_it_returns(
    control: ControlPlane,
) -> None:
    """`make run` restarted: the worker is unhealthy until it reconnects."""
    worker = await registered(control)
    interval = (await server(control, worker.key_id))["heartbeat_interval"]
    await fleet(control).sweep(now=time.time() + 3 * interval + 1)
    assert (await server(control, worker.key_id))["status"] == "unhealthy"
    await create_user(control, "hal")
    assert (await user(control, "hal"))["state"] == "pending"
    assert (await worker.heartbeat()).status == 200
    hal = await user(control, "hal")
    assert hal["state"] == "provisioning" and hal["server_id"] == worker.key_id


async def test_every_autoscaler_run_places_pending_users(control: ControlPlane) -> None:
    worker = await registered(control)
    now = time.time()
    await asyncio.to_thread(
        db,
        control,
        "INSERT INTO users (id, subdomain, plan, state, created_at, updated_at) "
        "VALUES ('ida', 'ida', 'default', 'pending', ?, ?)",
        now,
        now,
    )
    await run(control, scheduled=True)
    assert (await user(control, "ida"))["server_id"] == worker.key_id


async def test_a_user_leaving_makes_room_for_a_pending_one(control: ControlPlane) -> None:
    await join(control, {"cpus": 1, "memory_mb": 512 + 1024, "disk_gb": 10}, memory_mb=1536)
    await create_user(control, "jan")
    await create_user(control, "kit")
    assert (await user(control, "kit"))["state"] == "pending"
    await control.admin("DELETE", "/v1/users/jan")
    assert (await user(control, "kit"))["state"] == "provisioning"


# --- 5. a server holding users' data is not deleted --------------------------------
async def test_idle_server_with_a_cancelled_users_data_is_kept(
    cloud: Start,  # noqa: F811 - the imported fixture
    hetzner_fake: HetznerFake,
) -> None:
    control = await cloud(scale_down_idle=0.0)
    await add_users(control, "lou")
    await run(control)
    worker = await boot(control, hetzner_fake)
    await asyncio.to_thread(
        db, control, "UPDATE servers SET create_confirmed_at = ?", time.time() - 3500
    )
    await control.admin("DELETE", "/v1/users/lou")
    await run(control)
    srv = await server(control, worker.key_id)
    assert srv["status"] == "active" and len(hetzner_fake.servers) == 1
    assert srv["kept_because"].startswith("holds the data of 1 cancelled user(s) kept until")


async def test_drained_server_with_a_suspended_users_data_is_kept(
    cloud: Start,  # noqa: F811 - the imported fixture
    hetzner_fake: HetznerFake,
) -> None:
    control = await cloud()
    await add_users(control, "max")
    await run(control)
    worker = await boot(control, hetzner_fake)
    await control.admin("POST", "/v1/users/max/suspend")
    await control.admin("POST", f"/v1/servers/{worker.key_id}/drain")
    await run(control)
    srv = await server(control, worker.key_id)
    assert srv["status"] == "active" and srv["draining"] is True
    assert srv["kept_because"] == "holds the data of 1 suspended user(s)"
    assert "server_drained" not in await event_kinds(control)
