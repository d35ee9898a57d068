"""Plans: which plan a stored user has.

The `Plan` type, the built-in `DEFAULT_PLAN` and the PLANS parser live in the foundation
(control/plans.py) because the settings build them; they are re-exported here for the
domain modules that import them from their own subpackage.
"""

from __future__ import annotations

from control.plans import DEFAULT_PLAN, Plan, PlanError, parse_plans

__all__ = ["DEFAULT_PLAN", "Plan", "PlanError", "parse_plans", "plan_of"]


def plan_of(plans: dict[str, Plan], name: str) -> Plan:
    """A stored user's plan; one removed from configuration since falls back to default
    rather than making the user unplaceable."""
    return plans.get(name) or plans["default"]
