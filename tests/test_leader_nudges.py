"""What a follower's change needs of the singletons, the leader does at once (issue 16):
the nudger's sends (control/leadership/nudges.py), then two real control planes on one
PostgreSQL database, with the real hcloud client against the fake Hetzner API and the
real Cloudflare client against its fake. Their scheduled rounds are an hour apart, so
only the follower's nudge (an autoscaler run) or its generation bump heard on the
leader's wake bus (a DNS round) can have made the leader act."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from control.api.agent_wakes import NUDGER
from control.appkeys import DNS_SYNC, LEADERSHIP
from control.leadership.nudges import CHANNEL, JOBS, Nudger, named
from control.singleton_jobs import NOW
from tests.agent.test_e2e import until
from tests.fakes.cloudflare import CloudflareFake
from tests.fakes.hetzner import HetznerFake, agent_dist, fleet_settings, provider_with_timeout
from tests.fixtures import ControlPlane
from tests.test_checkout_headroom import run
from tests.test_dns_sync import a_records, cloudflare_settings, worker_at

WAIT = 30.0


@pytest.mark.parametrize(
    ("payload", "jobs"),
    [
        ("autoscale-now", ["autoscale-now"]),
        ("autoscale-now autoscale-now", ["autoscale-now"]),
        ("dns-now autoscale-now DROP TABLE users", ["autoscale-now"]),
        ("autoscale-now;", []),  # whole words only
        ("autoscale", []),
        ("", []),
    ],
)
def test_a_nudge_names_known_jobs_only(payload: str, jobs: list[str]) -> None:
    assert named(payload) == jobs


def test_every_job_a_nudge_may_name_is_a_job_the_leader_runs_now() -> None:
    assert set(JOBS) <= set(NOW)


class Wire:
    """What a Nudger sends, each send held until the test lets it go."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.go = asyncio.Event()
        self.arrived = asyncio.Event()
        self.fail = False

    async def send(self, channel: str, payload: str) -> None:
        self.sent.append((channel, payload))
        self.arrived.set()
        await self.go.wait()
        if self.fail:
            raise ConnectionError("database gone")


async def test_nudges_asked_during_a_send_go_in_one_send_after_it() -> None:
    wire = Wire()
    nudger = Nudger(wire.send)
    nudger.nudge("autoscale-now")
    await asyncio.wait_for(wire.arrived.wait(), WAIT)
    for job_id in ("autoscale-now", "dns-now", "autoscale-now"):  # dns-now: not a nudge
        nudger.nudge(job_id)
    wire.go.set()
    await nudger.close()
    assert wire.sent == [(CHANNEL, "autoscale-now")] * 2
    assert nudger.sent == 2


async def test_a_failed_send_is_said_and_the_next_nudge_goes_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wire = Wire()
    wire.fail = True
    wire.go.set()
    nudger = Nudger(wire.send)
    with caplog.at_level(logging.WARNING):
        nudger.nudge("autoscale-now")
        await asyncio.sleep(0)
        nudger.nudge("autoscale-now")
        await nudger.close()
    assert "nudge to the leader (autoscale-now) not sent: database gone" in caplog.text
    assert nudger.sent == 0 and len(wire.sent) == 2
    await nudger.close()  # twice is safe
    nudger.nudge("autoscale-now")  # closed: nothing more goes out
    await asyncio.sleep(0)
    assert len(wire.sent) == 2


async def planes(
    control_factory: Callable[..., ControlPlane], **settings: Any
) -> tuple[ControlPlane, ControlPlane]:
    """Two replicas of one database; the first started leads, the second follows."""
    leader = control_factory(**settings)
    await leader.start()
    follower = control_factory(**settings)
    await follower.start()
    assert leader.app is not None and follower.app is not None
    assert leader.app[LEADERSHIP].leads() and not follower.app[LEADERSHIP].leads()
    return leader, follower


async def test_a_user_left_pending_on_a_follower_has_the_leader_create_a_server_now(
    control_factory: Callable[..., ControlPlane],
    hetzner_fake: HetznerFake,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    settings = fleet_settings(hetzner_fake, agent_dist(tmp_path / "dist"))
    leader, follower = await planes(
        control_factory,
        provider_factory=provider_with_timeout(2.0),
        database_url=postgres_url,
        **settings,
    )
    await run(leader)  # the start-up run is over: nobody waits, nothing to create
    assert hetzner_fake.create_requests == []
    status, body = await follower.admin("POST", "/v1/users", {"user_id": "u1", "subdomain": "u1"})
    assert status == 201 and body["server_id"] is None, body

    async def created() -> bool:
        return bool(hetzner_fake.create_requests)

    await until(created, "a server created by the leader for the follower's user", WAIT)
    assert len(hetzner_fake.create_requests) == 1
    assert follower.app is not None and follower.app[NUDGER].sent >= 1


async def test_a_user_placed_on_a_follower_gets_its_dns_record_from_the_leader_now(
    control_factory: Callable[..., ControlPlane],
    cloudflare_fake: CloudflareFake,
    postgres_url: str,
) -> None:
    leader, follower = await planes(
        control_factory, database_url=postgres_url, **cloudflare_settings(cloudflare_fake)
    )
    assert leader.app is not None and follower.app is not None
    leads, follows = leader.app[DNS_SYNC].counters, follower.app[DNS_SYNC].counters

    async def started() -> bool:
        return leads.rounds >= 1

    await until(started, "the leader's start-up DNS round", WAIT)
    await worker_at(follower, "203.0.113.40", "a")
    status, body = await follower.admin("POST", "/v1/users", {"user_id": "dot", "subdomain": "dot"})
    assert status == 201 and body["server_id"] is not None, body

    async def published() -> bool:
        return "dot.example.com" in a_records(cloudflare_fake)

    await until(published, "the leader's DNS round for the follower's user", WAIT)
    assert a_records(cloudflare_fake) == {"dot.example.com": "203.0.113.40"}
    assert follows.rounds == 0  # a follower never runs a round itself
