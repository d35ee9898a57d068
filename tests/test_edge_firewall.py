"""The edge firewall: the real control plane, the real hcloud and Cloudflare clients, the
fake Hetzner and Cloudflare APIs (their firewall and IP-range endpoints)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from control.appkeys import FIREWALL_SYNC, PROVIDER_HEALTH
from control.edge.cloudflare_ips import DAY, Known, RangesFile
from control.edge.firewall_sync import FirewallSync
from tests.fakes.cloudflare import CloudflareFake
from tests.fakes.cloudflare_edge import CLOUDFLARE_IPV4, CLOUDFLARE_IPV6
from tests.fakes.hetzner import (
    HetznerFake,
    agent_dist,
    fleet_settings,
    provider_with_timeout,
)
from tests.fixtures import ControlPlane

OURS = {"managed-by": "clawfleet", "clawfleet-cluster": "default"}
SELECTOR = "clawfleet-cluster=default,managed-by=clawfleet"
CF = sorted(CLOUDFLARE_IPV4 + CLOUDFLARE_IPV6)
Start = Callable[..., Awaitable[ControlPlane]]


@pytest.fixture
def edge(
    control_factory: Callable[..., ControlPlane],
    hetzner_fake: HetznerFake,
    cloudflare_fake: CloudflareFake,
    tmp_path: Path,
) -> Start:
    dist = agent_dist(tmp_path / "dist")

    async def start(settle: bool = True, **overrides: Any) -> ControlPlane:
        settings = fleet_settings(hetzner_fake, dist) | {
            "dns_provider": "cloudflare",
            "cloudflare_api_token": cloudflare_fake.token,
            "cloudflare_zone_id": cloudflare_fake.zone_id,
            "cloudflare_api_base": cloudflare_fake.url,
            "base_domain": "example.com",
            "dns_reconcile_interval": 3600.0,
            "firewall_reconcile_interval": 3600.0,
            "provider_startup_wait": 5.0,
        }
        plane = control_factory(provider_with_timeout(5.0), **(settings | overrides))
        await plane.start()
        if not settle:
            return plane
        assert plane.app is not None and plane.app[PROVIDER_HEALTH].usable
        sync = firewall(plane)
        if sync.enabled:
            await until(lambda: sync.counters.rounds >= 1)  # the round the scheduler starts
            async with sync.stopped():  # ... has ended: each test sees only its own
                pass
        return plane

    return start


def firewall(plane: ControlPlane) -> FirewallSync:
    assert plane.app is not None
    return plane.app[FIREWALL_SYNC]


async def until(check: Callable[[], Any], seconds: float = 10.0) -> None:
    # The scheduler's first round runs on its own task: it exposes no event to await.
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def ours(fake: HetznerFake) -> list[dict[str, Any]]:
    return [f for f in fake.firewalls.values() if f["labels"] == OURS]


def inbound(firewall: dict[str, Any]) -> dict[str, list[str]]:
    return {r["port"]: sorted(r["source_ips"]) for r in firewall["rules"]}


async def events(plane: ControlPlane, *kinds: str) -> list[str]:
    _, body = await plane.admin("GET", "/v1/events?limit=1000")
    return [f"{e['kind']}: {e['message']}" for e in body["events"] if e["kind"] in kinds]


async def test_one_labelled_firewall_admits_only_cloudflare_on_443_and_covers_new_servers(
    edge: Start, hetzner_fake: HetznerFake, cloudflare_fake: CloudflareFake
) -> None:
    plane = await edge()
    (fw,) = ours(hetzner_fake)
    assert fw["name"] == "clawfleet-default"
    assert inbound(fw) == {"443": CF}  # nothing else inbound: no 22, no 80
    assert all(r["direction"] == "in" and r["protocol"] == "tcp" for r in fw["rules"])
    assert [a["label_selector"]["selector"] for a in fw["applied_to"]] == [SELECTOR]
    # A server created later with our labels is covered; another project's is not.
    mine = hetzner_fake.add_server("cf-default-1", OURS)
    theirs = hetzner_fake.add_server("web", {"managed-by": "someone"})
    await firewall(plane).run()
    assert mine["public_net"]["firewalls"] == [{"id": fw["id"], "status": "applied"}]
    assert theirs["public_net"]["firewalls"] == []
    assert await events(plane, "firewall_created")
    assert cloudflare_fake.count("GET /ips") == 1  # daily, not every round
    assert len(ours(hetzner_fake)) == 1 and firewall(plane).status()["state"] == "ok"


async def test_drift_is_repaired_and_recorded(edge: Start, hetzner_fake: HetznerFake) -> None:
    plane = await edge()
    sync = firewall(plane)
    (fw,) = ours(hetzner_fake)
    fw["rules"].append(
        {
            "description": "temporary",
            "direction": "in",
            "protocol": "tcp",
            "port": "22",
            "source_ips": ["0.0.0.0/0", "::/0"],
            "destination_ips": [],
        }
    )
    await sync.run()
    assert inbound(hetzner_fake.firewalls[fw["id"]]) == {"443": CF}
    assert any("changed by hand" in e for e in await events(plane, "firewall_repaired"))

    fw["applied_to"] = []  # detached by hand
    await sync.run()
    assert [a["label_selector"]["selector"] for a in fw["applied_to"]] == [SELECTOR]
    assert any("detached" in e for e in await events(plane, "firewall_repaired"))

    del hetzner_fake.firewalls[fw["id"]]  # deleted by hand
    await sync.run()
    (again,) = ours(hetzner_fake)
    assert again["id"] != fw["id"] and inbound(again) == {"443": CF}
    assert any("gone" in e for e in await events(plane, "firewall_repaired"))

    # A second firewall with our labels would add its rules to ours: it goes.
    hetzner_fake.firewalls[99999] = {**again, "id": 99999, "name": "copy", "applied_to": []}
    await sync.run()
    assert [f["id"] for f in ours(hetzner_fake)] == [again["id"]]
    assert sync.counters.last_error is None


async def test_a_hetzner_failure_is_retried_next_round(
    edge: Start, hetzner_fake: HetznerFake
) -> None:
    plane = await edge()
    sync = firewall(plane)
    (fw,) = ours(hetzner_fake)
    fw["applied_to"] = []
    hetzner_fake.inject("POST /firewalls/{id}/actions/apply_to_resources", 503, "unavailable")
    await sync.run()
    assert fw["applied_to"] == [] and sync.status()["state"] == "failing"
    assert await events(plane, "firewall_failed")
    await sync.run()
    assert fw["applied_to"] and sync.status()["state"] == "ok"


async def test_a_refresh_failure_keeps_the_last_good_ranges_across_a_restart(
    edge: Start, hetzner_fake: HetznerFake, cloudflare_fake: CloudflareFake, tmp_path: Path
) -> None:
    plane = await edge()
    saved = tmp_path / "cloudflare-ips.json"
    assert json.loads(saved.read_text())["ipv4_cidrs"] == sorted(
        CLOUDFLARE_IPV4, key=lambda c: tuple(int(p) for p in c.split("/")[0].split("."))
    )
    await plane.stop()
    # A day later Cloudflare is down while the control plane restarts.
    old = RangesFile(saved).load()
    assert old is not None
    RangesFile(saved).save(Known(old.ranges, time.time() - 2 * DAY, old.etag))
    cloudflare_fake.inject("GET /ips", 503, 10000, times=1000)
    (fw,) = ours(hetzner_fake)
    fw["rules"] = []  # and someone empties the rules meanwhile
    plane = await edge()
    sync = firewall(plane)
    assert inbound(hetzner_fake.firewalls[fw["id"]]) == {"443": CF}  # repaired from the file
    await sync.run()
    stale = await events(plane, "cloudflare_ips_stale")
    assert len(stale) == 1 and "keeping the last good list" in stale[0]  # once per outage
    assert sync.counters.last_error is None  # the firewall itself is fine

    cloudflare_fake.clear_faults()
    cloudflare_fake.edge.ipv4_cidrs = [*CLOUDFLARE_IPV4, "198.51.100.0/24"]  # not public: refused
    await sync.run()
    assert inbound(hetzner_fake.firewalls[fw["id"]]) == {"443": CF}
    cloudflare_fake.edge.ipv4_cidrs = [*CLOUDFLARE_IPV4, "104.32.0.0/16"]
    await sync.run()
    assert inbound(hetzner_fake.firewalls[fw["id"]]) == {"443": sorted([*CF, "104.32.0.0/16"])}
    assert await events(plane, "cloudflare_ips_recovered")
    assert await events(plane, "firewall_updated")


async def test_first_start_during_an_outage_changes_nothing(
    edge: Start, hetzner_fake: HetznerFake, cloudflare_fake: CloudflareFake
) -> None:
    cloudflare_fake.inject("GET /ips", 500, 10000, times=1000)
    plane = await edge()
    assert ours(hetzner_fake) == []  # neither an empty (closed) nor a guessed list
    assert firewall(plane).status()["state"] == "failing"
    assert await events(plane, "cloudflare_ips_stale")
    cloudflare_fake.clear_faults()
    await firewall(plane).run()
    (fw,) = ours(hetzner_fake)
    assert inbound(fw) == {"443": CF}


@pytest.mark.parametrize(
    ("overrides", "ports"),
    [
        ({"acme_email": "ops@example.com"}, {"443", "80"}),
        (
            {
                "break_glass_ssh_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
                "break_glass_ssh_cidrs": ("203.0.113.7/32",),
            },
            {"443", "22"},
        ),
        ({"break_glass_ssh_cidrs": ("203.0.113.7/32",)}, {"443"}),  # no key: no SSH
    ],
    ids=["acme", "break-glass", "cidrs-without-key"],
)
async def test_ports_beyond_443_only_when_asked(
    edge: Start, hetzner_fake: HetznerFake, overrides: dict[str, Any], ports: set[str]
) -> None:
    await edge(**overrides)
    (fw,) = ours(hetzner_fake)
    assert set(inbound(fw)) == ports
    if "22" in ports:
        assert inbound(fw)["22"] == ["203.0.113.7/32"]


@pytest.mark.parametrize(
    "overrides",
    [{"edge_firewall": "false"}, {"dns_provider": "none"}],
    ids=["turned-off", "no-cloudflare"],
)
async def test_off_means_no_firewall_call_at_all(
    edge: Start, hetzner_fake: HetznerFake, cloudflare_fake: CloudflareFake, overrides: Any
) -> None:
    plane = await edge(**overrides)
    await firewall(plane).run()
    assert not [c for c in hetzner_fake.calls if "firewalls" in c.endpoint]
    assert cloudflare_fake.count("GET /ips") == 0
    assert firewall(plane).status()["state"] == "off"


async def test_the_local_provider_has_no_firewall(control: ControlPlane) -> None:
    assert control.app is not None
    assert not control.app[FIREWALL_SYNC].enabled
    await control.app[FIREWALL_SYNC].run()  # nothing to do, nothing raised


async def test_server_pages_say_whether_the_firewall_covers_them(
    edge: Start, hetzner_fake: HetznerFake
) -> None:
    from tests.test_protocol import registered

    plane = await edge()
    joined = await registered(plane, "by-hand")  # a join token: a server brought by hand
    status, body = await plane.admin("GET", f"/v1/servers/{joined.key_id}")
    assert status == 200
    assert body["firewall"]["protected"] is False and body["firewall"]["state"] == "unprotected"
    _, listing = await plane.admin("GET", "/v1/servers")
    (row,) = [s for s in listing["servers"] if s["id"] == joined.key_id]
    assert row["firewall"]["state"] == "unprotected"


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@laptop"


@pytest.mark.parametrize("break_glass", [False, True], ids=["sealed", "break-glass"])
async def test_a_new_worker_boots_without_sshd_and_behind_the_firewall(
    edge: Start, hetzner_fake: HetznerFake, break_glass: bool
) -> None:
    extra = {"break_glass_ssh_key": KEY, "break_glass_ssh_cidrs": ("203.0.113.7/32",)}
    plane = await edge(**(extra if break_glass else {}))
    status, _ = await plane.admin("POST", "/v1/users", {"user_id": "ann", "subdomain": "ann"})
    assert status == 201
    await until(lambda: hetzner_fake.create_requests)  # the autoscaler creates a server
    (request,) = hetzner_fake.create_requests
    user_data = request["user_data"]
    assert "sed -i -E 's/^root:[^:]*:/root:!*:/'" in user_data  # root locked either way
    assert ('systemctl mask "${ssh_units[@]}"' in user_data) is not break_glass
    assert (KEY in user_data) is break_glass
    await firewall(plane).run()
    (fw,) = ours(hetzner_fake)
    (server,) = hetzner_fake.servers.values()
    assert server["public_net"]["firewalls"] == [{"id": fw["id"], "status": "applied"}]
    assert ("22" in inbound(fw)) is break_glass


async def test_a_provider_validated_late_gets_its_firewall_at_once(
    edge: Start, hetzner_fake: HetznerFake
) -> None:
    hetzner_fake.delay("GET /server_types", 1.0)  # validation outlasts start-up's wait
    plane = await edge(settle=False, provider_startup_wait=0.2)
    assert plane.app is not None and not plane.app[PROVIDER_HEALTH].usable
    assert ours(hetzner_fake) == []
    # No round is due for an hour (FIREWALL_RECONCILE_INTERVAL): only the late validation
    # can have triggered the one that creates it.
    await until(lambda: ours(hetzner_fake))
    assert inbound(ours(hetzner_fake)[0]) == {"443": CF}
