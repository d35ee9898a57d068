"""What a user id, a subdomain and a plan name may be.

Contract: `validate_user_id`, `validate_subdomain` and `known_plan` return the value
or raise `BadRequest` (400) saying what is allowed; a subdomain is one DNS label and
never one of RESERVED_SUBDOMAINS (names the control plane or a mail setup may need).
The shapes are shared.names' (the agent checks the same ones), only the 400 is here.
"""

from __future__ import annotations

from control.errors import BadRequest
from control.plans import Plan
from shared.names import dns_label_ok, user_id_ok

RESERVED_SUBDOMAINS = frozenset(
    {
        "www",
        "api",
        "admin",
        "mail",
        "smtp",
        "imap",
        "pop",
        "ftp",
        "ns1",
        "ns2",
        "dashboard",
        "app",
        "status",
        "metrics",
        "control",
        "webhook",
        "webhooks",
        "auth",
        "login",
        "static",
    }
)


def validate_user_id(user_id: str) -> str:
    if not user_id_ok(user_id):
        raise BadRequest(
            "user_id: 1-63 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit"
        )
    return user_id


def validate_subdomain(subdomain: str) -> str:
    if not dns_label_ok(subdomain):
        raise BadRequest(
            "subdomain: a DNS label of 1-63 characters a-z 0-9 -, not starting or ending with -"
        )
    if subdomain in RESERVED_SUBDOMAINS:
        raise BadRequest(f"subdomain: {subdomain!r} is reserved")
    return subdomain


def known_plan(plans: dict[str, Plan], name: str) -> Plan:
    plan = plans.get(name)
    if plan is None:
        raise BadRequest(
            f"plan: unknown plan {name!r} (known: {', '.join(sorted(plans))})",
            code="unknown_plan",
        )
    return plan
