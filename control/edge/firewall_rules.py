"""What the cluster's Hetzner Cloud Firewall must say, and what to change so it does: pure.

Contract:
- `check_ranges(ipv4, ipv6)` turns Cloudflare's published ranges (`GET /ips`) into
  `Ranges`, canonical and sorted, or raises `ValueError`: no IPv4 range at all, a value
  that is not a CIDR block with empty host bits, a block that is not globally routable,
  or one wider than /8 (IPv4) or /24 (IPv6). A reply like that is a broken or hostile
  answer, and the firewall would admit it: the last good list is kept instead.
- `desired_rules(ranges, http=..., ssh_cidrs=...)`: inbound TCP 443 from every range;
  TCP 80 likewise only with `http` (Let's Encrypt's HTTP-01, which reaches the worker
  through Cloudflare's proxy: `ACME_EMAIL`); TCP 22 only from `ssh_cidrs`, and only when
  given (break-glass SSH). Nothing else inbound, and no outbound rule at all: Hetzner
  then lets all outbound traffic through. A rule holds at most MAX_CIDRS blocks (the
  API's limit); longer lists are split over several rules.
- `rule_of(api_rule)` reads a rule as the API shows it (`Rule`): blocks canonical and
  sorted, so that the order of blocks and a rule's description never count as drift.
- `plan_firewall(desired, selector, found)`: given every firewall carrying our labels,
  what to do. None found: create one (rules and selector in the same request). Several:
  keep the oldest (lowest id), delete the others, whose rules would otherwise be added
  to ours (Hetzner admits what any applied firewall admits). The keeper's rules differ
  from `desired` (as sets): set them. It is not applied to `selector`: apply it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_CIDRS = 100  # source_ips per rule (Hetzner's limit)
MIN_PREFIX = {4: 8, 6: 24}  # the widest block a published range may be
HTTPS, HTTP, SSH = "443", "80", "22"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Ranges:
    """Cloudflare's ranges, canonical and sorted (IPv4 first)."""

    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]

    @property
    def all(self) -> tuple[str, ...]:
        return self.ipv4 + self.ipv6


@dataclass(frozen=True)
class Rule:
    """One inbound rule. `description` is shown to people and never compared."""

    direction: str
    protocol: str
    port: str | None
    source_ips: tuple[str, ...]
    description: str | None = field(default=None, compare=False)

    def as_api(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "protocol": self.protocol,
            "port": self.port,
            "source_ips": list(self.source_ips),
            "destination_ips": [],
            "description": self.description,
        }


@dataclass(frozen=True)
class Found:
    """A firewall carrying our labels, as the API shows it."""

    id: int
    rules: tuple[Rule, ...]
    selectors: tuple[str, ...]  # label selectors it is applied to


@dataclass(frozen=True)
class FirewallPlan:
    create: bool = False
    keep: int | None = None  # the firewall we keep (None: the one `create` makes)
    set_rules: bool = False
    apply: bool = False
    delete: tuple[int, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.create or self.set_rules or self.apply or self.delete)


def _network(value: Any) -> Network:
    if not isinstance(value, str) or "/" not in value:
        raise ValueError(f"{value!r} is not a CIDR block")
    return ipaddress.ip_network(value.strip(), strict=True)


def _sorted(networks: Iterable[Network]) -> tuple[str, ...]:
    unique = {str(n) for n in networks}
    return tuple(sorted(unique, key=_source_key))


def check_ranges(ipv4: Sequence[Any], ipv6: Sequence[Any]) -> Ranges:
    """Cloudflare's published ranges, checked (see the module docstring)."""
    checked: dict[int, list[Network]] = {4: [], 6: []}
    for version, values in ((4, ipv4), (6, ipv6)):
        for value in values:
            network = _network(value)
            if network.version != version:
                raise ValueError(f"{value} is not an IPv{version} block")
            if not network.is_global:
                raise ValueError(f"{value} is not a public block")
            if network.prefixlen < MIN_PREFIX[version]:
                raise ValueError(f"{value} is wider than /{MIN_PREFIX[version]}")
            checked[version].append(network)
    if not checked[4]:
        raise ValueError("no IPv4 range")
    return Ranges(ipv4=_sorted(checked[4]), ipv6=_sorted(checked[6]))


def check_cidrs(values: Iterable[str]) -> tuple[str, ...]:
    """Operator-given blocks (break-glass SSH), canonical; ValueError names a bad one."""
    try:
        return _sorted(_network(value) for value in values)
    except ValueError as exc:
        raise ValueError(f"not a CIDR block with empty host bits: {exc}") from None


def _inbound(port: str, sources: tuple[str, ...], what: str) -> list[Rule]:
    chunks = [sources[i : i + MAX_CIDRS] for i in range(0, len(sources), MAX_CIDRS)]
    return [Rule("in", "tcp", port, chunk, what) for chunk in chunks]


def desired_rules(
    ranges: Ranges, *, http: bool = False, ssh_cidrs: Sequence[str] = ()
) -> tuple[Rule, ...]:
    """The firewall's rules (see the module docstring)."""
    rules = _inbound(HTTPS, ranges.all, "clawfleet: HTTPS from Cloudflare only")
    if http:
        rules += _inbound(HTTP, ranges.all, "clawfleet: HTTP from Cloudflare (ACME HTTP-01)")
    if ssh_cidrs:
        rules += _inbound(SSH, check_cidrs(ssh_cidrs), "clawfleet: break-glass SSH")
    return tuple(rules)


def rule_of(api: Mapping[str, Any]) -> Rule:
    """A rule as the API shows it, canonical (unreadable blocks are kept as text: they
    differ from anything desired, so the rule counts as drift)."""
    sources: list[str] = []
    for value in api.get("source_ips") or []:
        try:
            sources.append(str(_network(value)))
        except ValueError:
            sources.append(str(value))
    return Rule(
        direction=str(api.get("direction")),
        protocol=str(api.get("protocol")),
        port=api.get("port"),
        source_ips=tuple(sorted(set(sources), key=_source_key)),
        description=api.get("description"),
    )


def _source_key(value: str) -> tuple[int, int, int, str]:
    try:
        network = ipaddress.ip_network(value)
    except ValueError:
        return (9, 0, 0, value)
    return (network.version, int(network.network_address), network.prefixlen, "")


def same_rules(desired: Iterable[Rule], actual: Iterable[Rule]) -> bool:
    """Equal as sets of rules (order and descriptions aside; the blocks are sorted)."""
    return _canonical(desired) == _canonical(actual)


def _canonical(rules: Iterable[Rule]) -> set[Rule]:
    return {
        Rule(r.direction, r.protocol, r.port, tuple(sorted(r.source_ips, key=_source_key)))
        for r in rules
    }


def plan_firewall(desired: Sequence[Rule], selector: str, found: Sequence[Found]) -> FirewallPlan:
    """What to change at Hetzner (see the module docstring)."""
    if not found:
        return FirewallPlan(create=True)
    keep, *extras = sorted(found, key=lambda f: f.id)
    return FirewallPlan(
        keep=keep.id,
        set_rules=not same_rules(desired, keep.rules),
        apply=selector not in keep.selectors,
        delete=tuple(f.id for f in extras),
    )


def selector_of(labels: Mapping[str, str]) -> str:
    """The label selector matching exactly these labels, keys sorted."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def coverage(origin: str, status: Mapping[str, object] | None) -> dict[str, object]:
    """What a server's page says about the cluster firewall (`status` is the sync's, None
    without one). It reaches the servers the autoscaler creates, by their labels; a server
    joined by hand (origin "join") carries none, so it is unprotected whatever the state."""
    state = str(status["state"]) if status else "off"
    if origin == "join":
        return {
            "protected": False,
            "state": "unprotected",
            "detail": "joined by hand: outside the cluster firewall (docs/production.md, "
            "The edge); firewall it yourself",
        }
    detail = str(status["detail"]) if status else "EDGE_FIREWALL is off"
    return {"protected": state == "ok", "state": state, "detail": detail}
