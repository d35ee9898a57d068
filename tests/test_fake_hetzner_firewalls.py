"""The fake Hetzner API's firewalls, driven by the real hcloud client: what a caller sees must
be what it would see against api.hetzner.cloud (objects, action commands, APIException codes).

The client, `run` (a call in a thread) and `api_error` are tests/fakes/hcloud_client.py's."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hcloud import Client
from hcloud.firewalls import (
    BoundFirewall,
    Firewall,
    FirewallResource,
    FirewallResourceLabelSelector,
    FirewallRule,
)
from hcloud.servers import Server

from tests.fakes.hcloud_client import api_error, hcloud_client_fixture, run, some  # noqa: F401
from tests.fakes.hetzner import HetznerFake, hetzner_fake_fixture  # noqa: F401
from tests.fakes.hetzner_firewalls import rule_problem

CLOUDFLARE = ["173.245.48.0/20", "2400:cb00::/32"]
WORKERS = FirewallResource(
    type="label_selector",
    label_selector=FirewallResourceLabelSelector(selector="clawfleet-cluster=c1"),
)


def https_in(sources: list[str] = CLOUDFLARE) -> FirewallRule:
    return FirewallRule(
        direction="in", protocol="tcp", port="443", source_ips=sources, description="https"
    )


def server_ids(firewall: BoundFirewall) -> list[int]:
    return sorted(
        some(some(r.server).id)
        for entry in some(firewall.applied_to)
        for r in entry.applied_to_resources or []
    )


async def test_create_with_rules_applied_by_label_selector(
    client: Client, hetzner_fake: HetznerFake
) -> None:
    one = hetzner_fake.add_server("cf-w-0001", {"clawfleet-cluster": "c1"})
    hetzner_fake.add_server("elsewhere", {"clawfleet-cluster": "c2"})
    created = await run(
        client.firewalls.create,
        name="clawfleet-c1",
        labels={"managed-by": "clawfleet"},
        rules=[https_in(["2400:cb00:0000::/32", "173.245.48.0/20"])],
        resources=[WORKERS],
    )
    assert [a.command for a in some(created.actions)] == ["apply_firewall"]
    for action in some(created.actions):
        await run(action.wait_until_finished)
    firewall = await run(client.firewalls.get_by_id, created.firewall.id)
    rule = some(firewall.rules)[0]
    assert (rule.direction, rule.protocol, rule.port, rule.description) == (
        "in",
        "tcp",
        "443",
        "https",
    )
    assert rule.source_ips == ["2400:cb00::/32", "173.245.48.0/20"]  # canonical, as the API
    assert rule.destination_ips == []
    assert some(some(firewall.applied_to)[0].label_selector).selector == "clawfleet-cluster=c1"
    assert server_ids(firewall) == [one["id"]]

    # A worker created later is covered without touching the firewall, as with the real API.
    two = hetzner_fake.add_server("cf-w-0002", {"clawfleet-cluster": "c1"})
    firewall = await run(client.firewalls.get_by_id, firewall.id)
    assert server_ids(firewall) == [one["id"], two["id"]]
    seen = await run(client.servers.get_by_id, two["id"])
    assert [f.firewall.id for f in some(some(seen.public_net).firewalls)] == [firewall.id]
    assert [f.status for f in some(some(seen.public_net).firewalls)] == ["applied"]
    found = await run(client.firewalls.get_all, label_selector="managed-by=clawfleet")
    assert [f.id for f in found] == [firewall.id]
    error = await api_error(client.firewalls.get_all, label_selector="(x)")
    assert (error.code, error.message) == (
        "invalid_input",
        "invalid label_selector: unsupported term '(x)'",
    )


async def test_set_rules_replaces_them_and_reapplies(
    client: Client, hetzner_fake: HetznerFake
) -> None:
    server = hetzner_fake.add_server("cf-w-0001", {"clawfleet-cluster": "c1"})
    created = await run(client.firewalls.create, name="fw", rules=[https_in()], resources=[WORKERS])
    drifted = [
        https_in(),
        FirewallRule(direction="in", protocol="tcp", port="22", source_ips=["0.0.0.0/0"]),
    ]
    await run(client.firewalls.set_rules, created.firewall, drifted)
    assert len(some((await run(client.firewalls.get_by_id, created.firewall.id)).rules)) == 2

    actions = await run(client.firewalls.set_rules, created.firewall, [https_in()])
    assert [a.command for a in actions] == ["set_firewall_rules", "apply_firewall"]
    assert {"id": server["id"], "type": "server"} in some(actions[1].resources)
    rules = (await run(client.firewalls.get_by_id, created.firewall.id)).rules
    assert [r.port for r in some(rules)] == ["443"]


async def test_apply_to_a_server_and_remove_from_it(
    client: Client, hetzner_fake: HetznerFake
) -> None:
    server = hetzner_fake.add_server("cf-w-0001")
    created = await run(client.firewalls.create, name="fw", rules=[https_in()])
    direct = FirewallResource(type="server", server=Server(id=server["id"]))
    actions = await run(client.firewalls.apply_to_resources, created.firewall, [direct])
    assert [a.command for a in actions] == ["apply_firewall"]
    assert server["public_net"]["firewalls"] == [{"id": created.firewall.id, "status": "applied"}]
    again = await api_error(client.firewalls.apply_to_resources, created.firewall, [direct])
    assert again.code == "firewall_already_applied"

    in_use = await api_error(client.firewalls.delete, created.firewall)
    assert in_use.code == "resource_in_use"
    removed = await run(client.firewalls.remove_from_resources, created.firewall, [direct])
    assert [a.command for a in removed] == ["remove_firewall"]
    gone = await api_error(client.firewalls.remove_from_resources, created.firewall, [direct])
    assert gone.code == "firewall_already_removed"
    assert await run(client.firewalls.delete, created.firewall) is True
    assert hetzner_fake.firewalls == {}
    error = await api_error(client.firewalls.get_by_id, created.firewall.id)
    assert error.code == "not_found"


async def test_a_server_reached_by_selector_cannot_be_removed_alone(
    client: Client, hetzner_fake: HetznerFake
) -> None:
    server = hetzner_fake.add_server("cf-w-0001", {"clawfleet-cluster": "c1"})
    created = await run(client.firewalls.create, name="fw", rules=[], resources=[WORKERS])
    direct = FirewallResource(type="server", server=Server(id=server["id"]))
    error = await api_error(client.firewalls.remove_from_resources, created.firewall, [direct])
    assert error.code == "firewall_managed_by_label_selector"
    in_use = await api_error(client.firewalls.delete, created.firewall)
    assert in_use.code == "resource_in_use"
    await run(client.firewalls.remove_from_resources, created.firewall, [WORKERS])
    firewall = await run(client.firewalls.get_by_id, created.firewall.id)
    assert firewall.applied_to == []
    assert some((await run(client.servers.get_by_id, server["id"])).public_net).firewalls == []
    assert await run(client.firewalls.delete, firewall) is True


async def test_refusals_as_the_api_words_them(client: Client, hetzner_fake: HetznerFake) -> None:
    missing = FirewallResource(type="server", server=Server(id=424242))
    on_create = await api_error(client.firewalls.create, name="fw", resources=[missing])
    assert on_create.code == "firewall_resource_not_found"
    assert hetzner_fake.firewalls == {}
    bad = FirewallRule(direction="in", protocol="icmp", port="80", source_ips=["0.0.0.0/0"])
    invalid = await api_error(client.firewalls.create, name="fw", rules=[bad])
    assert invalid.code == "invalid_input"
    assert invalid.details["fields"][0]["name"] == "rules"
    created = await run(client.firewalls.create, name="fw", rules=[https_in()])
    taken = await api_error(client.firewalls.create, name="fw")
    assert taken.code == "uniqueness_error"
    on_apply = await api_error(client.firewalls.apply_to_resources, created.firewall, [missing])
    assert on_apply.code == "firewall_resource_not_found"
    assert (await api_error(client.firewalls.set_rules, created.firewall, [bad])).code == (
        "invalid_input"
    )
    assert some((await run(client.firewalls.get_by_id, created.firewall.id)).rules)[0].port == "443"
    nowhere = Firewall(id=424242)
    assert (await api_error(client.firewalls.set_rules, nowhere, [])).code == "not_found"
    assert (await api_error(client.firewalls.delete, nowhere)).code == "not_found"


async def test_a_change_during_a_running_action_conflicts(
    client: Client, hetzner_fake: HetznerFake
) -> None:
    hetzner_fake.add_server("cf-w-0001", {"clawfleet-cluster": "c1"})
    created = await run(client.firewalls.create, name="fw", rules=[https_in()])
    hetzner_fake.action_seconds = math.inf
    await run(client.firewalls.apply_to_resources, created.firewall, [WORKERS])
    error = await api_error(client.firewalls.set_rules, created.firewall, [])
    assert error.code == "conflict"
    hetzner_fake.finish_actions()
    assert await run(client.firewalls.set_rules, created.firewall, [])


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ({"direction": "in", "protocol": "tcp", "port": "443", "source_ips": ["0.0.0.0/0"]}, None),
        ({"direction": "out", "protocol": "udp", "port": "53", "destination_ips": ["::/0"]}, None),
        ({"direction": "in", "protocol": "icmp", "source_ips": ["10.0.0.0/8"]}, None),
        ({"direction": "in", "protocol": "tcp", "port": "1024-5000", "source_ips": ["::/0"]}, None),
        ({"direction": "up", "protocol": "tcp", "port": "1", "source_ips": ["::/0"]}, "direction"),
        ({"direction": "in", "protocol": "sctp", "source_ips": ["::/0"]}, "protocol"),
        ({"direction": "in", "protocol": "tcp", "source_ips": ["::/0"]}, "port is required"),
        ({"direction": "in", "protocol": "gre", "port": "1", "source_ips": ["::/0"]}, "only"),
        ({"direction": "in", "protocol": "tcp", "port": "0", "source_ips": ["::/0"]}, "port"),
        ({"direction": "in", "protocol": "tcp", "port": "9-8", "source_ips": ["::/0"]}, "port"),
        ({"direction": "in", "protocol": "tcp", "port": "65536", "source_ips": ["::/0"]}, "port"),
        ({"direction": "in", "protocol": "tcp", "port": "80"}, "source_ips is required"),
        (
            {
                "direction": "in",
                "protocol": "esp",
                "source_ips": ["::/0"],
                "destination_ips": ["::/0"],
            },
            "destination_ips is not allowed",
        ),
        ({"direction": "in", "protocol": "esp", "source_ips": ["10.0.0.1/8"]}, "host bits"),
        ({"direction": "in", "protocol": "esp", "source_ips": ["10.0.0.1"]}, "CIDR"),
        ({"direction": "in", "protocol": "esp", "source_ips": ["nope"]}, "CIDR"),
        ({"direction": "in", "protocol": "esp", "source_ips": ["::/0"] * 101}, "at most 100"),
        (
            {
                "direction": "in",
                "protocol": "esp",
                "source_ips": ["::/0"],
                "description": "x" * 256,
            },
            "description",
        ),
    ],
)
def test_rule_validation(rule: dict[str, Any], problem: str | None) -> None:
    found = rule_problem(rule)
    assert (found is None) if problem is None else (found is not None and problem in found)
