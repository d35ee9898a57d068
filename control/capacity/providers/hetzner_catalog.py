"""Hetzner's catalogue and naming rules, as pure functions: which (server type, location)
pairs can be ordered, and which labels and names the API accepts.

Contract:
- `plan_pairs(types, locations, wanted_types, wanted_locations)` returns the ordered
  valid pairs (type-major, in the settings' order) and warnings about skipped ones:
    * an unknown location or an unknown server type is an error;
    * a server type that is deprecated in any configured location where it is offered is
      an error (it can, or soon will, no longer be ordered: remove it from the setting);
    * a (type, location) combination that is simply not offered (e.g. CX types in the US
      locations `ash`/`hil`) is skipped with a warning;
    * a type merely sold out right now (`available: false`) stays, with a warning;
    * when no pair remains, that is an error.
  Every error is a ProviderError of kind "invalid" whose message names the setting and
  what IS available in the location.
- `type_infos(models)` reads `/server_types` (prices per location, per-location
  deprecation and availability, or the price list on an API without them).
- `check_labels` and `check_name` apply the API's label and hostname rules (kind
  "invalid"); `to_server` turns an hcloud server into a `ProviderServer`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hcloud.server_types import ServerType as HServerType
from hcloud.servers import Server

from control.capacity.providers.base import ProviderError, ProviderServer

_LABEL_PART = re.compile(r"^[a-zA-Z0-9]([-_.a-zA-Z0-9]*[a-zA-Z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_HOST_LABEL = re.compile(r"^[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?$")


@dataclass(frozen=True)
class Offer:
    """A server type in one location, as `/server_types` describes it."""

    deprecated: bool
    unavailable_after: datetime | None
    available: bool


@dataclass(frozen=True)
class TypeInfo:
    name: str
    cpus: int
    memory_mb: int
    disk_gb: int
    prices: dict[str, float] = field(default_factory=dict)  # location -> hourly, net
    offers: dict[str, Offer] = field(default_factory=dict)  # location -> offer


def plan_pairs(
    types: Mapping[str, TypeInfo],
    known_locations: Iterable[str],
    wanted_types: tuple[str, ...],
    wanted_locations: tuple[str, ...],
) -> tuple[list[tuple[str, str]], list[str]]:
    """The ordered valid (type, location) pairs and warnings about skipped ones.

    Raises ProviderError(kind="invalid") per the rule in the module docstring.
    """
    known = set(known_locations)
    for location in wanted_locations:
        if location not in known:
            raise ProviderError(
                f"HETZNER_LOCATION: {location} is not a Hetzner location; "
                f"known: {', '.join(sorted(known)) or 'none'}",
                kind="invalid",
            )
    for name in wanted_types:
        info = types.get(name)
        if info is None:
            raise ProviderError(
                f"HETZNER_SERVER_TYPE: {name} is not a Hetzner server type; "
                f"{_available_text(types, wanted_locations[0])}",
                kind="invalid",
            )
        for location in wanted_locations:
            offer = info.offers.get(location)
            if offer is None or not offer.deprecated:
                continue
            until = offer.unavailable_after
            if until is None or until <= datetime.now(UTC):
                how = "can no longer be ordered"
            else:
                how = f"can only be ordered until {until.date().isoformat()}"
            raise ProviderError(
                f"HETZNER_SERVER_TYPE: {name} is deprecated in {location} and {how}; "
                f"{_available_text(types, location)}",
                kind="invalid",
            )
    pairs: list[tuple[str, str]] = []
    warnings: list[str] = []
    for name in wanted_types:
        for location in wanted_locations:
            offer = types[name].offers.get(location)
            if offer is None:
                warnings.append(f"{name} is not offered in {location}: pair skipped")
                continue
            if not offer.available:
                warnings.append(f"{name} is currently out of stock in {location}")
            pairs.append((name, location))
    if not pairs:
        available = "; ".join(_available_text(types, location) for location in wanted_locations)
        raise ProviderError(
            "HETZNER_SERVER_TYPE/HETZNER_LOCATION: none of the listed server types "
            f"({', '.join(wanted_types)}) is offered in any listed location; {available}",
            kind="invalid",
        )
    return pairs, warnings


def _available_text(types: Mapping[str, TypeInfo], location: str) -> str:
    names = sorted(
        info.name
        for info in types.values()
        if location in info.offers and not info.offers[location].deprecated
    )
    return f"available in {location}: {', '.join(names) or 'none'}"


def check_labels(labels: Mapping[str, str]) -> None:
    """Hetzner's label rules (see the API's "Labels"); raises ProviderError "invalid"."""
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        ok_prefix = not prefix or (
            len(prefix) <= 253 and all(_DNS_LABEL.fullmatch(part) for part in prefix.split("."))
        )
        if not (ok_prefix and len(name) <= 63 and _LABEL_PART.fullmatch(name)):
            raise ProviderError(f"invalid label key {key!r}", kind="invalid")
        if prefix == "hetzner.cloud" or prefix.endswith(".hetzner.cloud"):
            raise ProviderError(f"label key {key!r} uses a reserved prefix", kind="invalid")
        if len(value) > 63 or (value and not _LABEL_PART.fullmatch(value)):
            raise ProviderError(
                f"invalid value for label {key!r}: at most 63 characters, alphanumeric at "
                "both ends, with '-', '_', '.' between",
                kind="invalid",
            )


def check_name(name: str) -> None:
    parts = name.split(".")
    if len(name) > 253 or not all(_HOST_LABEL.fullmatch(part) for part in parts):
        raise ProviderError(
            f"server name {name!r} is not a valid hostname (RFC 1123)", kind="invalid"
        )


def type_infos(server_types: Iterable[Any]) -> dict[str, TypeInfo]:
    """The API's server types (hcloud bound models) as `TypeInfo`s."""
    types: dict[str, TypeInfo] = {}
    for st in server_types:
        model: HServerType = st.data_model
        offers: dict[str, Offer] = {}
        per_location = getattr(model, "locations", None)  # hcloud >= 2.6, current API
        if per_location is not None:
            for entry in per_location:
                deprecation = entry.deprecation
                offers[str(entry.location.name)] = Offer(
                    deprecated=deprecation is not None,
                    unavailable_after=(
                        deprecation.unavailable_after if deprecation is not None else None
                    ),
                    available=entry.available is not False,
                )
        else:  # an API without per-location details: the price list says where it is sold
            for price in model.prices or []:
                offers[price["location"]] = Offer(False, None, True)
        prices = {
            p["location"]: float(p["price_hourly"]["net"])
            for p in model.prices or []
            if p.get("price_hourly")
        }
        name = str(model.name)
        types[name] = TypeInfo(
            name=name,
            cpus=int(model.cores or 0),
            memory_mb=round(float(model.memory or 0) * 1024),  # the API says GB
            disk_gb=int(model.disk or 0),
            prices=prices,
            offers=offers,
        )
    return types


def to_server(model: Server) -> ProviderServer:
    public_ip = None
    if model.public_net is not None and model.public_net.ipv4 is not None:
        public_ip = model.public_net.ipv4.ip
    created = model.created
    location = getattr(model, "location", None)  # hcloud >= 2.22 (older ones: datacenter)
    return ProviderServer(
        provider_id=str(model.id),
        name=str(model.name),
        status=str(model.status),
        labels=dict(model.labels or {}),
        public_ip=public_ip,
        server_type=model.server_type.data_model.name if model.server_type else None,
        location=location.data_model.name if location else None,
        created_at=created.timestamp() if isinstance(created, datetime) else None,
    )
