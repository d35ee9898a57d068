"""Plans: which plan a stored user has. The `Plan` type, the built-in `DEFAULT_PLAN`
and the PLANS parser live in the foundation (control/plans.py), because the settings
build them."""

from __future__ import annotations

from control.plans import Plan


def plan_of(plans: dict[str, Plan], name: str) -> Plan:
    """A stored user's plan; one removed from configuration since falls back to default
    rather than making the user unplaceable."""
    return plans.get(name) or plans["default"]
