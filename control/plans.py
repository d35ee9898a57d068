"""Plans: what each user's container may use, and which Stripe prices buy it.

Contract: `default` is built in (`DEFAULT_PLAN`); the PLANS setting (JSON) adds plans and
may override it. `parse_plans(text)` validates that JSON strictly and raises `PlanError`
naming the offending plan and field. This is a foundation module because the settings
parse PLANS at start-up and every domain subpackage reads a `Plan`; which plan a stored
user has is control/users/plans.py's `plan_of`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from control.errors import ConfigurationError
from shared.protocol import MAX_VOLUME_GB

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}\Z")


VOLUME_MIN_GB = 10  # Hetzner's smallest volume


@dataclass(frozen=True)
class Plan:
    name: str
    memory_mb: int
    cpus: float
    pids: int
    disk_gb: int
    stripe_price_ids: tuple[str, ...] = ()
    backup_minutes: int = 15  # scheduled snapshot interval (control/backups/schedule.py)
    # False: `cpus` is reserved (placement) and a weight, and idle CPU may be used beyond
    # it; True: `cpus` is also a hard cap (docs/capacity.md, "CPU").
    cpu_limit: bool = False

    @property
    def volume_gb(self) -> int:
        """The size of a user's volume on this plan (USER_VOLUMES): its disk, within
        Hetzner's smallest and largest volume. A volume grows to it and is never shrunk
        (control/volumes/steps.py)."""
        return min(MAX_VOLUME_GB, max(VOLUME_MIN_GB, self.disk_gb))


# OpenClaw's gateway is one Node.js process that mostly waits on model APIs: 1 GiB
# and half a core serve a single user well, and three fit a 4 GB, 2 vCPU server.
DEFAULT_PLAN = Plan(name="default", memory_mb=1024, cpus=0.5, pids=512, disk_gb=5)
_LIMITS = {
    "memory_mb": (64, 1024 * 1024),
    "cpus": (0.05, 256),
    "pids": (16, 1_000_000),
    "disk_gb": (1, 100_000),
}
# Optional, unlike _LIMITS: PLANS written before backups existed stay valid. restic needs
# a few seconds to minutes per snapshot, so more often than every 5 minutes only piles up.
BACKUP_MINUTES = (5, 7 * 24 * 60)


class PlanError(ConfigurationError):
    """PLANS is malformed; the message names the plan and field (settings add `PLANS:`)."""


def parse_plans(text: str) -> dict[str, Plan]:
    plans = {"default": DEFAULT_PLAN}
    if not text.strip():
        return plans
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanError(f"not valid JSON ({exc.msg} at {exc.pos})") from None
    if not isinstance(raw, dict):
        raise PlanError('expected an object {"<plan name>": {...}, ...}')
    seen_prices: dict[str, str] = {}
    for name, body in raw.items():
        plans[name] = _plan(name, body)
        for price in plans[name].stripe_price_ids:
            if price in seen_prices:
                raise PlanError(f"price {price} is in both {seen_prices[price]} and {name}")
            seen_prices[price] = name
    return plans


def _plan(name: str, body: object) -> Plan:
    if not _NAME.fullmatch(name):
        raise PlanError(f"plan name {name!r}: 1-32 characters a-z 0-9 _ -")
    if not isinstance(body, dict):
        raise PlanError(f"plan {name}: expected an object")
    unknown = set(body) - {*_LIMITS, "stripe_price_ids", "backup_minutes", "cpu_limit"}
    if unknown:
        raise PlanError(f"plan {name}: unknown field(s) {', '.join(sorted(unknown))}")
    values: dict[str, float] = {}
    for field, (low, high) in _LIMITS.items():
        value = body.get(field)
        integral = field != "cpus"
        ok_type = isinstance(value, int) if integral else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type:
            raise PlanError(
                f"plan {name}: {field} must be {'an integer' if integral else 'a number'}"
            )
        assert value is not None
        if not low <= value <= high:
            raise PlanError(f"plan {name}: {field} must be between {low} and {high}")
        values[field] = value
    prices = body.get("stripe_price_ids", [])
    if not isinstance(prices, list) or not all(isinstance(p, str) and p for p in prices):
        raise PlanError(f"plan {name}: stripe_price_ids must be a list of price ids")
    return Plan(
        name=name,
        memory_mb=int(values["memory_mb"]),
        cpus=float(values["cpus"]),
        pids=int(values["pids"]),
        disk_gb=int(values["disk_gb"]),
        stripe_price_ids=tuple(prices),
        backup_minutes=_backup_minutes(name, body.get("backup_minutes", 15)),
        cpu_limit=_flag(name, "cpu_limit", body.get("cpu_limit", False)),
    )


def _flag(name: str, field: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise PlanError(f"plan {name}: {field} must be true or false")
    return value


def _backup_minutes(name: str, value: object) -> int:
    low, high = BACKUP_MINUTES
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PlanError(f"plan {name}: backup_minutes must be a whole number from {low} to {high}")
    return value
