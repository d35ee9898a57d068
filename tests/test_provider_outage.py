"""Provider outages, rate limits and failing calls: the control plane keeps serving,
backs off per resource, and keeps MAX_SERVERS through timeouts (issue 10).

Against the fake Hetzner API, driven by the real hcloud client, with the real app.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from control.appkeys import PROVIDER_HEALTH, SCALER
from control.capacity.orphans import ORPHAN_DELETES_PER_SWEEP, ORPHAN_SWEEPS
from control.capacity.providers.base import ProviderError
from tests.fakes.hetzner import HetznerFake, agent_dist, fleet_settings, provider_with_timeout
from tests.fixtures import ControlPlane

OURS = {"managed-by": "clawfleet", "clawfleet-cluster": "default"}
Start = Callable[..., Awaitable[ControlPlane]]


@pytest.fixture
def cloud(
    control_factory: Callable[..., ControlPlane], hetzner_fake: HetznerFake, tmp_path: Path
) -> Start:
    dist = agent_dist(tmp_path / "dist")

    async def start(**overrides: Any) -> ControlPlane:
        settings = fleet_settings(hetzner_fake, dist) | {"provider_startup_wait": 0.5} | overrides
        plane = control_factory(provider_with_timeout(1.0), **settings)
        await plane.start()
        if plane.app is not None and plane.app[PROVIDER_HEALTH].usable:
            await run(plane)  # after the start-up run: each test sees only its own sweeps
        return plane

    return start


async def run(control: ControlPlane, scheduled: bool = True) -> None:
    assert control.app is not None
    await control.app[SCALER].run(scheduled)


async def add_user(control: ControlPlane, name: str) -> None:
    status, body = await control.admin("POST", "/v1/users", {"user_id": name, "subdomain": name})
    assert status == 201, body


async def event_kinds(control: ControlPlane) -> list[str]:
    _, body = await control.admin("GET", "/v1/events?limit=1000")
    return [e["kind"] for e in body["events"]]


def db(control: ControlPlane, sql: str, *params: Any) -> list[Any]:
    with sqlite3.connect(control.settings.database_path, timeout=10) as conn:
        return conn.execute(sql, params).fetchall()


async def until(check: Callable[[], Any], seconds: float = 10.0) -> None:
    # Polls the health the background validation updates: the app does not expose that
    # task (nor an event for its end) to await instead.
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


# -- start-up while Hetzner is down ------------------------------------------------------


async def test_control_plane_serves_while_hetzner_is_down_and_validates_when_it_is_back(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    """Before the fix start() raised ProviderError (exit 2 in production)."""
    hetzner_fake.inject("GET /server_types", 503, "unavailable", times=1000)
    control = await cloud()
    assert control.app is not None
    health = control.app[PROVIDER_HEALTH]
    assert health.state == "validating" and "unavailable" in health.detail
    async with control.session.get(control.url + "/healthz") as r:
        assert r.status == 200
        assert (await r.json())["provider"]["state"] == "validating"
    await add_user(control, "alice")  # the admin API serves
    _, listing = await control.admin("GET", "/v1/servers")  # what the dashboard polls
    assert listing["provider"]["state"] == "validating"
    async with control.session.get(control.url + "/metrics") as r:
        text = await r.text()
    assert 'clawfleet_provider_state{state="validating"} 1.0' in text
    await run(control, scheduled=False)
    assert hetzner_fake.count("POST /servers") == 0  # no creates before validation
    hetzner_fake.clear_faults()
    await until(lambda: health.state == "ok")
    await run(control, scheduled=False)
    assert len(hetzner_fake.servers) == 1


async def test_a_slow_catalogue_does_not_hold_start_up(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    hetzner_fake.delay("GET /server_types", 30.0)  # the client gives up after 1 s
    control = await cloud()  # PROVIDER_STARTUP_WAIT is 0.5 s here
    assert control.app is not None
    # Start-up returned with the one attempt still in flight: not answered (that is "ok"),
    # not timed out (that records its failure and when the next attempt is due).
    health = control.app[PROVIDER_HEALTH]
    assert (health.state, health.detail, health.attempts) == ("validating", "not validated yet", 1)
    assert health.next_attempt_at is None and hetzner_fake.count("GET /server_types") == 1
    await until(lambda: control.app is not None and control.app[PROVIDER_HEALTH].usable)


async def test_a_refused_token_still_stops_start_up(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    with pytest.raises(ProviderError, match="rejected HETZNER_API_TOKEN"):
        await cloud(hetzner_api_token="wrong-token")


# -- per-resource backoff, coalescing, log lines ------------------------------------------


async def test_a_failing_delete_backs_off_whatever_triggers_the_runs(
    cloud: Start, hetzner_fake: HetznerFake, caplog: pytest.LogCaptureFixture
) -> None:
    """Before the fix: one DELETE per run (60 runs, 60 DELETEs) and a traceback each."""
    control = await cloud()
    await add_user(control, "bob")
    await run(control, scheduled=False)
    (server_id,) = [r[0] for r in db(control, "SELECT id FROM servers")]
    db(control, "UPDATE servers SET status = 'dead' WHERE id = ?", server_id)
    hetzner_fake.inject("DELETE /servers/{id}", 503, "unavailable", times=1000)
    caplog.clear()
    assert control.app is not None
    before = control.app[SCALER].state.runs
    await asyncio.gather(*(run(control, scheduled=False) for _ in range(60)))
    for _ in range(5):
        await run(control, scheduled=False)
    assert hetzner_fake.count("DELETE /servers/{id}") == 1
    failures = [
        r
        for r in caplog.records
        if r.name.startswith("control.capacity.") and "delete" in r.message
    ]
    assert len(failures) == 1 and failures[0].exc_info is None
    delete = next(c for c in hetzner_fake.calls if c.endpoint == "DELETE /servers/{id}")
    assert "unavailable" in failures[0].message and delete.correlation_id in failures[0].message
    assert control.app[SCALER].state.runs - before <= 2 + 5  # the 60 triggers coalesced


async def test_on_demand_runs_coalesce_into_one_waiting_run(cloud: Start) -> None:
    control = await cloud()
    assert control.app is not None
    scaler = control.app[SCALER]
    before = scaler.state.runs
    await asyncio.gather(*(run(control, scheduled=False) for _ in range(30)))
    assert scaler.state.runs - before <= 2  # the one running and the one waiting


# -- orphans -------------------------------------------------------------------------------


async def test_orphan_deleted_is_recorded_after_the_delete_and_only_for_those_deleted(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud()
    first = hetzner_fake.add_server("clawfleet-default-stray1", dict(OURS))
    second = hetzner_fake.add_server("clawfleet-default-stray2", dict(OURS))
    for _ in range(ORPHAN_SWEEPS - 1):
        await run(control)
    hetzner_fake.inject("DELETE /servers/{id}", 503, "unavailable")  # the first delete fails
    await run(control)
    assert first["id"] in hetzner_fake.servers and second["id"] not in hetzner_fake.servers
    _, body = await control.admin("GET", "/v1/events?limit=100")
    recorded = [e["message"] for e in body["events"] if e["kind"] == "orphan_deleted"]
    assert len(recorded) == 1 and "stray2" in recorded[0]  # before the fix: two events
    assert control.app is not None
    control.app[SCALER].state.retries.clear()  # its backoff has passed
    await run(control)
    assert first["id"] not in hetzner_fake.servers
    assert (await event_kinds(control)).count("orphan_deleted") == 2


async def test_the_sweep_paces_its_deletes_within_the_api_budget(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud()
    for i in range(ORPHAN_DELETES_PER_SWEEP + 3):
        hetzner_fake.add_server(f"clawfleet-default-stray{i}", dict(OURS))
    for _ in range(ORPHAN_SWEEPS):
        await run(control)
    assert len(hetzner_fake.servers) == 3  # a few per sweep
    hetzner_fake.rate_limit_remaining = 60  # the budget is low: keep it for creates
    await run(control)
    assert len(hetzner_fake.servers) == 3
    hetzner_fake.rate_limit_remaining = 3600
    await run(control)
    assert hetzner_fake.servers == {}


# -- MAX_SERVERS through timeouts ------------------------------------------------------------


async def test_a_create_whose_answer_was_lost_counts_until_the_provider_says_it_is_gone(
    cloud: Start, hetzner_fake: HetznerFake, caplog: pytest.LogCaptureFixture
) -> None:
    """Before the fix the row was abandoned after PROVISION_TIMEOUT although the look-ups
    had failed, and a replacement was created: two servers under MAX_SERVERS=1."""
    caplog.set_level(logging.WARNING)
    control = await cloud(max_servers=1, provision_timeout=1.0)
    hetzner_fake.timeout_after_store(seconds=3)  # created, but the answer comes too late
    # The look-up before the create answers; every look-up after it fails.
    hetzner_fake.inject("GET /servers", 503, "unavailable", times=1000, after=1)
    await add_user(control, "cy")
    await run(control, scheduled=False)
    assert len(hetzner_fake.servers) == 1
    assert control.app is not None
    scaler = control.app[SCALER]
    # Real time on purpose: the fake holds the create's reply for 3 s and the client gives
    # up after 1 s; both are wall-clock, so PROVISION_TIMEOUT must pass for real too.
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:  # past PROVISION_TIMEOUT, runs keep coming
        scaler.state.retries.clear()
        scaler.state.paused_until = 0
        await run(control, scheduled=False)
        await asyncio.sleep(0.2)
    assert len(hetzner_fake.servers) == 1
    assert "create_abandoned" not in await event_kinds(control)
    hetzner_fake.clear_faults()
    scaler.state.retries.clear()
    await run(control, scheduled=False)  # the look-up answers: the server is adopted
    assert len(hetzner_fake.servers) == 1
    ((provider_id, status),) = db(control, "SELECT provider_id, status FROM servers")
    assert provider_id == str(next(iter(hetzner_fake.servers))) and status == "provisioning"
    assert not [r for r in caplog.records if r.exc_info is not None]


async def test_an_unconfirmed_create_is_given_up_once_the_provider_says_it_does_not_exist(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud(max_servers=1, provision_timeout=1.0)
    hetzner_fake.inject("POST /servers", 503, "unavailable")  # nothing created
    await add_user(control, "di")
    await run(control, scheduled=False)
    assert hetzner_fake.servers == {}
    db(control, "UPDATE servers SET create_requested_at = ?", time.time() - 5)
    assert control.app is not None
    control.app[SCALER].state.retries.clear()
    control.app[SCALER].state.paused_until = 0
    await run(control, scheduled=False)
    kinds = await event_kinds(control)
    assert "create_abandoned" in kinds
    assert len(hetzner_fake.servers) == 1  # the replacement, after a definite "no such server"
