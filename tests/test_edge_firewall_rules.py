"""The firewall's pure decisions: Cloudflare's ranges checked, the rules, the plan."""

from __future__ import annotations

from typing import Any

import pytest

from control.edge.cloudflare_ips import Known, refresh_due
from control.edge.firewall_rules import (
    MAX_CIDRS,
    Found,
    Ranges,
    Rule,
    check_ranges,
    coverage,
    desired_rules,
    plan_firewall,
    rule_of,
    same_rules,
    selector_of,
)
from tests.fakes.cloudflare_edge import CLOUDFLARE_IPV4, CLOUDFLARE_IPV6
from tests.fakes.hetzner_firewalls import rule_problem

CF = check_ranges(CLOUDFLARE_IPV4, CLOUDFLARE_IPV6)
SELECTOR = "clawfleet-cluster=prod,managed-by=clawfleet"


@pytest.mark.parametrize(
    ("ipv4", "ipv6", "problem"),
    [
        (["173.245.48.0/20"], [], None),
        (["173.245.48.0/20"], ["2400:cb00::/32"], None),
        ([], ["2400:cb00::/32"], "no IPv4 range"),
        (["0.0.0.0/0"], [], "wider than /8"),
        (["8.0.0.0/7"], [], "wider than /8"),
        (["10.0.0.0/8"], [], "not a public block"),
        (["173.245.48.1/20"], [], "host bits"),
        (["173.245.48.0"], [], "not a CIDR block"),
        (["nonsense/20"], [], "does not appear to be"),
        ([None], [], "not a CIDR block"),
        (["2400:cb00::/32"], [], "not an IPv4 block"),
        (["173.245.48.0/20"], ["2400::/16"], "wider than /24"),
        (["173.245.48.0/20"], ["::/0"], "not a public block|wider than /24"),
        (["173.245.48.0/20"], ["fd00::/32"], "not a public block"),
    ],
)
def test_published_ranges_are_checked(
    ipv4: list[Any], ipv6: list[Any], problem: str | None
) -> None:
    if problem is None:
        assert check_ranges(ipv4, ipv6).ipv4 == tuple(ipv4)
    else:
        with pytest.raises(ValueError, match=problem):
            check_ranges(ipv4, ipv6)


def test_ranges_are_canonical_sorted_and_deduplicated() -> None:
    ranges = check_ranges(
        ["198.41.128.0/17", "103.21.244.0/22", "198.41.128.0/17"], ["2606:4700:0::/32"]
    )
    assert ranges == Ranges(ipv4=("103.21.244.0/22", "198.41.128.0/17"), ipv6=("2606:4700::/32",))


@pytest.mark.parametrize(
    ("http", "ssh", "ports"),
    [
        (False, (), ["443"]),
        (True, (), ["443", "80"]),
        (False, ("203.0.113.7/32",), ["443", "22"]),
        (True, ("203.0.113.0/24", "2001:db8::/48"), ["443", "80", "22"]),
    ],
)
def test_desired_rules(http: bool, ssh: tuple[str, ...], ports: list[str]) -> None:
    rules = desired_rules(CF, http=http, ssh_cidrs=ssh)
    assert [r.port for r in rules] == ports
    for rule in rules:
        assert rule.direction == "in" and rule.protocol == "tcp"
        assert rule_problem(rule.as_api()) is None  # what the API accepts
        expected = set(ssh) if rule.port == "22" else set(CF.all)
        assert set(rule.source_ips) == expected
    assert all(r.direction == "in" for r in rules)  # no outbound rule: all outbound allowed


def test_long_range_lists_are_split_at_the_api_limit() -> None:
    many = [f"{i}.0.0.0/8" for i in range(11, 126) if i not in (100,)][:150]
    ranges = Ranges(ipv4=tuple(many), ipv6=())
    (first, second) = desired_rules(ranges)
    assert len(first.source_ips) == MAX_CIDRS and len(second.source_ips) == len(many) - MAX_CIDRS


def test_a_rule_as_the_api_shows_it_compares_regardless_of_order_and_description() -> None:
    (rule,) = desired_rules(CF)
    shown = {**rule.as_api(), "description": "edited", "source_ips": list(reversed(CF.all))}
    assert same_rules([rule], [rule_of(shown)])
    assert not same_rules([rule], [rule_of({**shown, "port": "444"})])
    assert not same_rules([rule], [rule_of({**shown, "source_ips": [*CF.all, "0.0.0.0/0"]})])
    assert not same_rules([rule], [rule_of(shown), rule_of({**shown, "port": "22"})])


def found(id_: int, rules: tuple[Rule, ...], *selectors: str) -> Found:
    return Found(id=id_, rules=rules, selectors=selectors)


DESIRED = desired_rules(CF)
EDITED = desired_rules(CF, ssh_cidrs=("0.0.0.0/0",))


@pytest.mark.parametrize(
    ("firewalls", "expected"),
    [
        ([], dict(create=True, keep=None, set_rules=False, apply=False, delete=())),
        ([found(5, DESIRED, SELECTOR)], dict(keep=5, set_rules=False, apply=False, delete=())),
        ([found(5, EDITED, SELECTOR)], dict(keep=5, set_rules=True, apply=False, delete=())),
        ([found(5, DESIRED)], dict(keep=5, set_rules=False, apply=True, delete=())),
        ([found(5, DESIRED, "other=x")], dict(keep=5, set_rules=False, apply=True, delete=())),
        ([found(5, ())], dict(keep=5, set_rules=True, apply=True, delete=())),
        (
            [found(9, EDITED, SELECTOR), found(5, DESIRED, SELECTOR)],
            dict(keep=5, set_rules=False, apply=False, delete=(9,)),
        ),
    ],
    ids=["none", "in-order", "edited", "detached", "other-selector", "emptied", "duplicate"],
)
def test_plan(firewalls: list[Found], expected: dict[str, Any]) -> None:
    plan = plan_firewall(DESIRED, SELECTOR, firewalls)
    for name, value in expected.items():
        assert getattr(plan, name) == value, name
    changes = ("create", "set_rules", "apply", "delete")
    assert plan.empty is not any(expected.get(name) for name in changes)


def test_selector_matches_the_labels_our_servers_carry() -> None:
    labels = {"managed-by": "clawfleet", "clawfleet-cluster": "prod"}
    assert selector_of(labels) == SELECTOR


@pytest.mark.parametrize(
    ("fetched_at", "now", "due"),
    [(None, 0.0, True), (1000.0, 1000.0, False), (1000.0, 87399.0, False), (1000.0, 87400.0, True)],
)
def test_refresh_is_daily(fetched_at: float | None, now: float, due: bool) -> None:
    known = None if fetched_at is None else Known(CF, fetched_at)
    assert refresh_due(known, now) is due


@pytest.mark.parametrize(
    ("origin", "status", "protected", "state"),
    [
        ("provider", {"state": "ok", "detail": "firewall 7 applied"}, True, "ok"),
        ("provider", {"state": "failing", "detail": "HTTP 503"}, False, "failing"),
        ("provider", {"state": "pending", "detail": "no round yet"}, False, "pending"),
        ("provider", {"state": "off", "detail": "EDGE_FIREWALL is off"}, False, "off"),
        ("provider", None, False, "off"),
        ("join", {"state": "ok", "detail": "firewall 7 applied"}, False, "unprotected"),
        ("join", None, False, "unprotected"),
    ],
)
def test_what_a_server_page_says(
    origin: str, status: dict[str, str] | None, protected: bool, state: str
) -> None:
    shown = coverage(origin, status)
    assert (shown["protected"], shown["state"]) == (protected, state)


def test_the_cli_shouts_when_a_server_is_unprotected() -> None:
    from control.cli.render import render_server

    server = {"id": "srv-1", "origin": "join", "containers": [], "capacity": {}}
    text = render_server({**server, "firewall": coverage("join", None)})
    assert "UNPROTECTED: joined by hand" in text
    text = render_server(
        {**server, "firewall": coverage("provider", {"state": "ok", "detail": ""})}
    )
    assert "protected" in text and "UNPROTECTED" not in text
