"""Plans: what each user's container may use. `default` is built in; the PLANS
setting (capacity issue) will extend and override this table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    name: str
    memory_mb: int
    cpus: float
    pids: int
    disk_gb: int


# OpenClaw's gateway is a Node.js process: 2 GiB leaves room for a busy session.
DEFAULT_PLANS: dict[str, Plan] = {
    "default": Plan(name="default", memory_mb=2048, cpus=1.0, pids=512, disk_gb=10),
}


def plan_of(plans: dict[str, Plan], name: str) -> Plan:
    """A stored user's plan; one removed from configuration since falls back to default
    rather than making the user unplaceable."""
    return plans.get(name) or plans["default"]
