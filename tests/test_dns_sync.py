"""DNS follows placement: the real control plane, the real Cloudflare SDK, the fake API."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent

from control.appkeys import DNS_SYNC, SCHEDULER
from control.dns.provider import DnsError
from control.settings import Settings
from tests.database import execute
from tests.fakes.cloudflare import CloudflareFake
from tests.fixtures import ControlPlane
from tests.test_protocol import registered
from tests.worker import FakeWorker

HEALTHY = {
    "state": "running",
    "health": "healthy",
    "image_id": "x",
    "started_at": "",
    "restart_count": 0,
}


def set_ip(settings: Settings, server_id: str, ip: str) -> None:
    execute(settings, "UPDATE servers SET public_ip = ? WHERE id = ?", ip, server_id)


async def worker_at(control: ControlPlane, ip: str, name: str) -> FakeWorker:
    worker = await registered(control, name)
    await asyncio.to_thread(set_ip, control.settings, worker.key_id, ip)
    return worker


def a_records(fake: CloudflareFake) -> dict[str, str]:
    return {r["name"]: r["content"] for r in fake.records.values() if r["type"] == "A"}


ZONE = "example.com"


def cloudflare_settings(fake: CloudflareFake) -> dict[str, Any]:
    """A control plane publishing to the fake, whose scheduled rounds are an hour apart."""
    return {
        "dns_provider": "cloudflare",
        "cloudflare_api_token": fake.token,
        "cloudflare_zone_id": fake.zone_id,
        "cloudflare_api_base": fake.url,
        "base_domain": ZONE,
        "dns_reconcile_interval": 3600.0,
    }


@pytest.fixture
async def plane(
    control_factory: Callable[..., ControlPlane], cloudflare_fake: CloudflareFake
) -> ControlPlane:
    control = control_factory(**cloudflare_settings(cloudflare_fake))
    await control.start()
    return control


async def sync(control: ControlPlane) -> Any:
    assert control.app is not None
    await control.app[DNS_SYNC].run()


async def test_records_follow_placement_moves_and_removal(
    plane: ControlPlane, cloudflare_fake: CloudflareFake
) -> None:
    a = await worker_at(plane, "203.0.113.10", "a")
    await plane.admin("POST", "/v1/users", {"user_id": "alice", "subdomain": "alice"})
    await sync(plane)
    assert a_records(cloudflare_fake) == {"alice.example.com": "203.0.113.10"}
    (record,) = cloudflare_fake.records.values()
    assert (
        record["proxied"] is True
        and record["ttl"] == 1
        and "managed-by=clawfleet" in record["comment"]
    )

    b = await worker_at(plane, "203.0.113.11", "b")
    status, _ = await plane.admin("POST", "/v1/users/alice/move", {"server_id": b.key_id})
    assert status == 200
    await sync(plane)
    assert a_records(cloudflare_fake) == {
        "alice.example.com": "203.0.113.10"
    }  # until healthy there
    await b.heartbeat([{"user_id": "alice", **HEALTHY}])
    await sync(plane)
    assert a_records(cloudflare_fake) == {"alice.example.com": "203.0.113.11"}

    await plane.admin("DELETE", "/v1/users/alice")
    await sync(plane)
    assert a_records(cloudflare_fake) == {}
    _, evs = await plane.admin("GET", "/v1/events?limit=1000")
    kinds = [e["kind"] for e in evs["events"]]
    assert "dns_upserted" in kinds and "dns_deleted" in kinds
    assert a.key_id  # the first worker stays registered


async def test_drift_is_repaired_and_foreign_records_left_alone(
    plane: ControlPlane, cloudflare_fake: CloudflareFake
) -> None:
    await worker_at(plane, "203.0.113.20", "a")
    await plane.admin("POST", "/v1/users", {"user_id": "bob", "subdomain": "bob"})
    foreign = cloudflare_fake.add_record("www.example.com", "198.51.100.1")
    await sync(plane)
    (ours,) = [r for r in cloudflare_fake.records.values() if r["name"] == "bob.example.com"]
    ours["content"] = "198.51.100.99"  # changed by hand
    await sync(plane)
    assert a_records(cloudflare_fake)["bob.example.com"] == "203.0.113.20"
    cloudflare_fake.records.pop(ours["id"])  # deleted by hand
    await sync(plane)
    assert a_records(cloudflare_fake)["bob.example.com"] == "203.0.113.20"
    assert cloudflare_fake.records[foreign["id"]]["content"] == "198.51.100.1"
    # A record of ours that no user owns goes.
    cloudflare_fake.add_record(
        "ghost.example.com",
        "203.0.113.99",
        comment=next(
            iter(
                r["comment"]
                for r in cloudflare_fake.records.values()
                if r["name"] == "bob.example.com"
            )
        ),
    )
    await sync(plane)
    assert "ghost.example.com" not in a_records(cloudflare_fake)


def job_ends(control: ControlPlane) -> asyncio.Queue[str]:
    """The id of each scheduler job as it ends: what a test awaits instead of sleeping."""
    ends: asyncio.Queue[str] = asyncio.Queue()

    def ended(event: JobExecutionEvent) -> None:
        ends.put_nowait(event.job_id)

    assert control.app is not None
    control.app[SCHEDULER].add_listener(ended, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    return ends


async def test_a_changed_assignment_triggers_a_round(
    plane: ControlPlane, cloudflare_fake: CloudflareFake
) -> None:
    await worker_at(plane, "203.0.113.30", "a")
    ends = job_ends(plane)
    await plane.admin("POST", "/v1/users", {"user_id": "cat", "subdomain": "cat"})
    # No explicit sync: the placement's change schedules a round; other jobs (the
    # start-up round, the autoscaler) may end first, so look again after each.
    while "cat.example.com" not in a_records(cloudflare_fake):
        await asyncio.wait_for(ends.get(), 10)
    assert a_records(cloudflare_fake) == {"cat.example.com": "203.0.113.30"}


async def test_a_token_without_dns_edit_stops_start_up(
    control_factory: Callable[..., ControlPlane], cloudflare_fake: CloudflareFake
) -> None:
    cloudflare_fake.scopes = {"zone:read", "dns:read"}
    control = control_factory(
        dns_provider="cloudflare",
        cloudflare_api_token=cloudflare_fake.token,
        cloudflare_zone_id=cloudflare_fake.zone_id,
        cloudflare_api_base=cloudflare_fake.url,
        base_domain=ZONE,
    )
    with pytest.raises(DnsError) as info:
        await control.start()
    assert "CLOUDFLARE_API_TOKEN" in str(info.value) and cloudflare_fake.token not in str(
        info.value
    )


async def test_without_a_dns_provider_nothing_is_recorded(control: ControlPlane) -> None:
    await worker_at(control, "203.0.113.40", "a")
    await control.admin("POST", "/v1/users", {"user_id": "dee", "subdomain": "dee"})
    await sync(control)
    _, evs = await control.admin("GET", "/v1/events?limit=1000")
    assert not [e for e in evs["events"] if e["kind"].startswith("dns_")]


async def test_last_error_is_the_last_rounds_and_clears_after_a_clean_one(
    plane: ControlPlane, cloudflare_fake: CloudflareFake
) -> None:
    """/readyz reads it: before the fix one failed round left DNS "not ready" for good."""
    assert plane.app is not None
    counters = plane.app[DNS_SYNC].counters
    ends = job_ends(plane)
    while not counters.rounds:  # the scheduler's start-up round, so it cannot take the fault
        await asyncio.wait_for(ends.get(), 10)
    async with plane.app[DNS_SYNC].stopped():
        pass  # ... and until it has finished
    cloudflare_fake.inject("GET /zones/{zone_id}/dns_records", 400, 1004, "bad filter")
    await sync(plane)
    assert counters.last_error is not None and "bad filter" in counters.last_error
    await sync(plane)
    assert counters.last_error is None
