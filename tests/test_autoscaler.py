"""The autoscaler against the fake Hetzner Cloud API, driven by the real hcloud client.

Runs are triggered explicitly (`run`) so each test sees exactly the sweeps it makes;
the interval job is set far apart.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from cloud_init.render import user_data_hash
from control.appkeys import FLEET, SCALER
from control.capacity.providers.hetzner_ratelimit import RateBudget
from control.capacity.providers.local import agent_env_from_user_data
from tests.database import execute
from tests.fakes.hetzner import HetznerFake, agent_dist, fleet_settings, provider_with_timeout
from tests.fixtures import ControlPlane
from tests.worker import FakeWorker

OURS = {"managed-by": "clawfleet", "clawfleet-cluster": "default"}
Start = Callable[..., Awaitable[ControlPlane]]


@pytest.fixture
def cloud(
    control_factory: Callable[..., ControlPlane], hetzner_fake: HetznerFake, tmp_path: Path
) -> Start:
    dist = agent_dist(tmp_path / "dist")

    async def start(budget: RateBudget | None = None, **overrides: Any) -> ControlPlane:
        settings = fleet_settings(hetzner_fake, dist) | overrides
        plane = control_factory(provider_with_timeout(2.0, budget), **settings)
        await plane.start()
        await run(plane)  # let the start-up run finish before the test acts
        return plane

    return start


class BucketClock:
    """Epoch seconds that move only when slept on; each sleep (the wait for one request,
    `shared.backoff.rate_limit_wait`) gives the fake's bucket that one request back, as
    its wall-clock refill would have."""

    def __init__(self, fake: HetznerFake) -> None:
        self.fake = fake
        self.at = time.time()

    def now(self) -> float:
        return self.at

    async def sleep(self, seconds: float) -> None:
        self.at += seconds
        self.fake.rate_limit_remaining += 1


async def run(control: ControlPlane, scheduled: bool = True) -> None:
    assert control.app is not None
    await control.app[SCALER].run(scheduled)


async def add_users(control: ControlPlane, *names: str) -> None:
    for name in names:
        status, body = await control.admin(
            "POST", "/v1/users", {"user_id": name, "subdomain": name}
        )
        assert status == 201, body


async def servers(control: ControlPlane) -> list[dict[str, Any]]:
    _, body = await control.admin("GET", "/v1/servers")
    return list(body["servers"])


async def event_kinds(control: ControlPlane) -> list[str]:
    _, body = await control.admin("GET", "/v1/events?limit=1000")
    return [e["kind"] for e in body["events"]]


def db(control: ControlPlane, sql: str, *params: Any) -> None:
    execute(control.settings, sql, *params)  # either backend (tests/database.py)


async def purge_retained(control: ControlPlane, worker: FakeWorker) -> None:
    """RETENTION_DAYS pass for every cancelled user, and `worker` deletes their volumes."""
    assert control.app is not None
    await asyncio.to_thread(
        db,
        control,
        "UPDATE users SET purge_after = ? WHERE state = 'deprovisioned'",
        time.time() - 1,
    )
    await control.app[FLEET].sweep()  # asks the worker to delete the volumes
    generation = (await worker.assignments()).body["generation"]
    assert (await worker.heartbeat(generation=generation)).status == 200
    await control.app[FLEET].sweep()  # it has: the users are forgotten


async def boot(control: ControlPlane, fake: HetznerFake, index: int = -1) -> FakeWorker:
    """What cloud-init does on the new server, reduced to the agent's registration."""
    env = agent_env_from_user_data(fake.create_requests[index]["user_data"])
    assert env["CONTROL_URL"] == control.settings.public_url
    worker = FakeWorker.with_token(control.url, control.session, env["BOOTSTRAP_TOKEN"])
    reply = await worker.register(resources={"cpus": 2, "memory_mb": 4096, "disk_gb": 80})
    assert reply.status == 201, reply.body
    return worker


async def test_pending_user_creates_a_labelled_server_that_binds_on_registration(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud()
    await add_users(control, "alice")
    await run(control, scheduled=False)
    assert len(hetzner_fake.servers) == 1
    request = hetzner_fake.create_requests[0]
    assert {k: request["labels"][k] for k in OURS} == OURS
    assert request["server_type"] == "cpx22" and request["location"] == "nbg1"
    assert request["image"] == "ubuntu-24.04"
    assert request["user_data"].startswith("#!/bin/bash")
    (srv,) = await servers(control)
    assert srv["status"] == "provisioning" and srv["provider_id"] == str(
        next(iter(hetzner_fake.servers))
    )
    assert request["labels"]["clawfleet-server"] == srv["id"]
    assert request["labels"]["clawfleet-userdata"] == user_data_hash(request["user_data"])
    assert all(len(value) <= 63 for value in request["labels"].values())
    # The server boots and its agent registers: it is the same server row, alice lands there.
    worker = await boot(control, hetzner_fake)
    assert worker.key_id == srv["id"]
    _, alice = await control.admin("GET", "/v1/users/alice")
    assert alice["server_id"] == srv["id"] and alice["state"] == "provisioning"
    # A server that registered is not created again.
    await run(control)
    assert len(hetzner_fake.create_requests) == 1


async def test_caps_hold_back_demand_loudly(
    cloud: Start, hetzner_fake: HetznerFake, caplog: pytest.LogCaptureFixture
) -> None:
    control = await cloud(max_servers=3, max_creates_per_run=2)
    await add_users(control, *(f"u{i}" for i in range(30)))  # ten servers' worth
    for _ in range(5):
        await run(control)
    assert len(hetzner_fake.servers) == 3  # never more than MAX_SERVERS
    assert hetzner_fake.count("POST /servers") == 3
    assert "MAX_SERVERS holds back" in caplog.text
    assert "scale_capped" in await event_kinds(control)


async def test_one_run_creates_at_most_max_creates_per_run(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud(max_servers=10, max_creates_per_run=2)
    # Ten servers' worth, written straight to the database so that no placement
    # triggers a run behind the test's back: each count below is one run's.
    now = time.time()
    for i in range(30):
        await asyncio.to_thread(
            db,
            control,
            "INSERT INTO users (id, subdomain, plan, state, created_at, updated_at) "
            "VALUES (?, ?, 'default', 'pending', ?, ?)",
            f"u{i}",
            f"u{i}",
            now + i,
            now + i,
        )
    await run(control)
    assert len(hetzner_fake.servers) == 2  # not 10: MAX_CREATES_PER_RUN holds the rest back
    await run(control)
    assert len(hetzner_fake.servers) == 4


async def test_warm_headroom_creates_ahead_of_demand(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud(warm_headroom=2)
    await run(control)
    assert len(hetzner_fake.servers) == 1  # cpx22 holds three default users
    await run(control)
    assert len(hetzner_fake.servers) == 1  # the booting server counts as room on the way


async def test_server_that_never_registers_is_deleted_and_replaced(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud()
    await add_users(control, "bob")
    await run(control)
    (first,) = list(hetzner_fake.servers)
    await asyncio.to_thread(  # PROVISION_TIMEOUT has passed since the create
        db, control, "UPDATE servers SET create_confirmed_at = ?", time.time() - 10_000
    )
    await run(control)
    assert first not in hetzner_fake.servers
    assert len(hetzner_fake.servers) == 1  # the demand was retried with a new server
    kinds = await event_kinds(control)
    assert "provision_timeout" in kinds and "server_deleted" in kinds
    statuses = sorted(s["status"] for s in await servers(control))
    assert statuses == ["deleted", "provisioning"]


async def test_unavailable_pair_falls_back_to_the_next_location(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud()
    hetzner_fake.inject("POST /servers", 412, "resource_unavailable")
    await add_users(control, "carol")
    await run(control)
    assert [r["location"] for r in hetzner_fake.create_requests] == ["fsn1"]
    (srv,) = await servers(control)
    assert srv["provider_id"] is not None
    assert "create_failed" in await event_kinds(control)


async def test_resource_limit_stops_scaling_up(cloud: Start, hetzner_fake: HetznerFake) -> None:
    control = await cloud()
    hetzner_fake.inject("POST /servers", 403, "resource_limit_exceeded")
    await add_users(control, "dan")
    await run(control)
    await run(control)
    assert hetzner_fake.servers == {}
    assert hetzner_fake.count("POST /servers") == 1  # paused after the limit, not hammering
    assert control.app is not None and "limit" in (control.app[SCALER].state.alert or "")


async def test_rate_limit_backs_off_until_one_request_is_back(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    clock = BucketClock(hetzner_fake)
    control = await cloud(budget=RateBudget(clock=clock.now, sleep=clock.sleep))
    assert control.app is not None
    control.app[SCALER].provisioner.clock = clock.now
    hetzner_fake.inject("POST /servers", 429, "rate_limit_exceeded")  # reset: in an hour
    await add_users(control, "erin")
    await run(control, scheduled=False)
    await run(control, scheduled=False)
    assert hetzner_fake.count("POST /servers") == 1
    # One request is back after a second: not the hour until the bucket is full.
    paused_for = control.app[SCALER].state.paused_until - clock.now()
    assert 0.99 <= paused_for <= 1.5  # RateLimit-Reset is in whole seconds
    await run(control, scheduled=False)
    assert hetzner_fake.count("POST /servers") == 1  # still paused: no time has passed
    await clock.sleep(paused_for)
    await run(control, scheduled=False)
    assert len(hetzner_fake.servers) == 1


async def test_create_that_times_out_after_storing_is_adopted_not_duplicated(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud()
    hetzner_fake.timeout_after_store(seconds=5)  # longer than the provider's 2 s timeout
    await add_users(control, "fay")
    await run(control)
    assert len(hetzner_fake.servers) == 1
    (srv,) = await servers(control)
    assert srv["status"] == "provisioning"
    if control.app is not None:
        control.app[SCALER].state.paused_until = 0  # skip the backoff
        control.app[SCALER].state.retries.clear()
    await run(control)
    assert len(hetzner_fake.servers) == 1  # adopted by name
    (srv,) = await servers(control)
    assert srv["provider_id"] == str(next(iter(hetzner_fake.servers)))


async def test_orphans_go_after_three_scheduled_sweeps_and_never_without_both_labels(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud()
    orphan = hetzner_fake.add_server("clawfleet-default-stray", dict(OURS))
    half = hetzner_fake.add_server("clawfleet-half", {"managed-by": "clawfleet"})
    other = hetzner_fake.add_server("other-cluster", {**OURS, "clawfleet-cluster": "staging"})
    for _ in range(5):
        await run(control, scheduled=False)  # triggered runs do not count
    await run(control)
    await run(control)
    assert orphan["id"] in hetzner_fake.servers  # seen twice: not yet
    await run(control)
    assert orphan["id"] not in hetzner_fake.servers
    assert half["id"] in hetzner_fake.servers and other["id"] in hetzner_fake.servers
    assert "orphan_deleted" in await event_kinds(control)


async def test_orphan_sweep_deletes_nothing_when_the_provider_cannot_be_read(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud()
    orphan = hetzner_fake.add_server("clawfleet-default-stray", dict(OURS))
    hetzner_fake.inject("GET /servers", 503, "unavailable", times=10)
    for _ in range(4):
        await run(control)
    assert orphan["id"] in hetzner_fake.servers


async def test_idle_server_is_deleted_near_the_end_of_its_billed_hour(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud(scale_down_idle=0.0)
    await add_users(control, "gus")
    await run(control)
    worker = await boot(control, hetzner_fake)
    await control.admin("DELETE", "/v1/users/gus")
    await purge_retained(control, worker)  # its data no longer keeps the server
    await run(control)
    assert len(hetzner_fake.servers) == 1  # idle, but its billed hour has just begun
    await asyncio.to_thread(
        db,
        control,
        "UPDATE servers SET create_confirmed_at = ? WHERE id = ?",
        time.time() - 3500,
        worker.key_id,
    )
    await run(control)
    assert hetzner_fake.servers == {}
    (srv,) = await servers(control)
    assert srv["status"] == "deleted" and srv["cordoned"] is True
    assert (await worker.heartbeat()).status == 403


async def test_min_servers_and_busy_servers_are_kept(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud(scale_down_idle=0.0, min_servers=1)
    await add_users(control, "hal")
    await run(control)
    worker = await boot(control, hetzner_fake)
    await asyncio.to_thread(
        db, control, "UPDATE servers SET create_confirmed_at = ?", time.time() - 3500
    )
    await run(control)
    assert len(hetzner_fake.servers) == 1  # busy
    await control.admin("DELETE", "/v1/users/hal")
    await purge_retained(control, worker)
    await run(control)
    assert len(hetzner_fake.servers) == 1  # MIN_SERVERS
    assert (await worker.heartbeat()).status == 200


async def test_dead_server_is_deleted_at_the_provider_and_its_user_replaced(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud()
    await add_users(control, "ivy")
    await run(control)
    first = list(hetzner_fake.servers)
    await boot(control, hetzner_fake)
    assert control.app is not None
    await control.app[FLEET].sweep(now=time.time() + control.settings.dead_after + 1)
    _, ivy = await control.admin("GET", "/v1/users/ivy")
    assert ivy["state"] == "pending"  # its server died; waiting for a new one
    await run(control)
    assert first[0] not in hetzner_fake.servers  # the dead one is gone at the provider
    assert len(hetzner_fake.servers) == 1  # and a replacement is on its way


async def test_drain_moves_users_one_at_a_time_then_deletes_the_server(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud()
    await add_users(control, "jo", "kim")
    await run(control)
    source = await boot(control, hetzner_fake)
    await control.admin("POST", f"/v1/servers/{source.key_id}/drain")
    await run(control)  # the drained users are demand: a new server is created
    target = await boot(control, hetzner_fake)
    await run(control)
    _, listing = await control.admin("GET", "/v1/users")
    moving = [u for u in listing["users"] if u["server_id"] == target.key_id]
    assert len(moving) == 1  # one at a time
    # Make-before-break: the old server still runs the moving user's container.
    old = await source.assignments()
    assert sorted(c["user_id"] for c in old.body["containers"]) == ["jo", "kim"]
    first = moving[0]["user_id"]
    report = {
        "user_id": first,
        "state": "running",
        "health": "healthy",
        "image_id": "x",
        "started_at": "2026-11-27T00:00:00Z",
        "restart_count": 0,
        "error": None,
    }
    await target.heartbeat([report])
    old = await source.assignments()
    assert [c["user_id"] for c in old.body["containers"]] == [
        u for u in ("jo", "kim") if u != first
    ]
    await run(control)
    second = "kim" if first == "jo" else "jo"
    await target.heartbeat([report, {**report, "user_id": second}])
    await run(control)
    assert len(hetzner_fake.servers) == 1  # the target only: the drained server is gone
    statuses = {s["id"]: s["status"] for s in await servers(control)}
    assert statuses[source.key_id] == "deleted" and statuses[target.key_id] == "active"
    assert "server_drained" in await event_kinds(control)


async def test_unorderable_server_type_stops_start_up_with_exit_2(
    hetzner_fake: HetznerFake, tmp_path: Path
) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "ADMIN_TOKEN": "a" * 40,
        "INTERNAL_SECRET": "s" * 40,
        "DATABASE_PATH": str(tmp_path / "db.sqlite"),
        "LISTEN_PORT": "1",  # never reached: validation comes first
        "PROVIDER": "hetzner",
        "PUBLIC_URL": "https://control.example.com",
        "HETZNER_API_TOKEN": hetzner_fake.token,
        "HETZNER_API_ENDPOINT": hetzner_fake.url,
        "HETZNER_SERVER_TYPE": "cx22",
        "HETZNER_LOCATION": "nbg1",
        "PYTHONPATH": str(Path(__file__).parent.parent),
    }
    # A subprocess that this event loop keeps serving the fake to.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "control",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    message = err.decode().strip().splitlines()[-1]
    assert message.startswith("clawfleet: start-up error: HETZNER_SERVER_TYPE: cx22 is deprecated")
    assert "cpx22" in message  # names what is available there
    assert hetzner_fake.token not in err.decode()
