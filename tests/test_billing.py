"""Billing facts applied to users (control/billing/rules.py) through the real control plane."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from control.appkeys import FLEET
from control.billing.claims import Owner, Payer, claim, derive_subdomain
from control.billing.rules import Hold, OperatorAction, Target, combine, next_hold, target
from control.billing.subscriptions import SubState, supersedes
from control.plans import DEFAULT_PLAN, Plan
from tests.fixtures import ControlPlane
from tests.test_protocol import registered

PRO = Plan("pro", 2048, 1.0, 1024, 20, ("price_pro",))
PLANS = {"default": DEFAULT_PLAN, "pro": PRO}
HEALTHY = {
    "state": "running",
    "health": "healthy",
    "image_id": "x",
    "started_at": "",
    "restart_count": 0,
}


@dataclass(frozen=True)
class Fact:
    event_id: str
    event_type: str
    state_at: int
    user_id: str | None = None
    subdomain: str | None = None
    customer_id: str | None = "cus_1"
    subscription_id: str | None = "sub_1"
    status: str | None = None
    price_id: str | None = None
    current_period_end: int | None = None
    refetched: bool = False
    previous_status: str | None = None


def checkout(at: int = 100, user: str = "alice", **kw: Any) -> Fact:
    return Fact(
        f"evt_co_{at}", "checkout.session.completed", at, user_id=user, subdomain=user, **kw
    )


def sub(status: str, at: int, price: str | None = "price_pro", **kw: Any) -> Fact:
    kind = (
        "customer.subscription.deleted" if status == "deleted" else "customer.subscription.updated"
    )
    return Fact(f"evt_{status}_{at}", kind, at, status=status, price_id=price, **kw)


@pytest.fixture
async def plane(control_factory: Callable[..., ControlPlane]) -> ControlPlane:
    control = control_factory(plans=PLANS, past_due_grace=3600.0, retention_days=30.0)
    await control.start()
    return control


async def apply(control: ControlPlane, *facts: Fact) -> None:
    assert control.app is not None
    for fact in facts:
        await control.app[FLEET].apply_billing(fact)


async def user(control: ControlPlane, user_id: str = "alice") -> dict[str, Any]:
    status, body = await control.admin("GET", f"/v1/users/{user_id}")
    assert status == 200, body
    return body


@pytest.mark.parametrize(
    ("status", "past_due_for", "expected"),
    [
        ("active", None, "run"),
        ("trialing", None, "run"),
        ("past_due", 10, "run"),
        ("past_due", 4000, "suspend"),
        ("unpaid", None, "suspend"),
        ("paused", None, "suspend"),
        ("canceled", None, "deprovision"),
        ("incomplete_expired", None, "deprovision"),
        ("deleted", None, "deprovision"),
        ("incomplete", None, "wait"),
        (None, None, "wait"),
    ],
)
def test_target(status: str | None, past_due_for: float | None, expected: str) -> None:
    now = 1_000_000.0
    since = None if past_due_for is None else now - past_due_for
    assert target(status, since, now, 3600) == expected


@pytest.mark.parametrize(
    ("user_id", "label"),
    [("alice", "alice"), ("Bob.Smith_2", "bob-smith-2"), ("__", "user"), ("a" * 70, "a" * 50)],
)
def test_derive_subdomain(user_id: str, label: str) -> None:
    assert derive_subdomain(user_id) == label


async def test_checkout_then_active_subscription_places_the_user_on_its_plan(
    plane: ControlPlane,
) -> None:
    worker = await registered(plane)
    await apply(plane, checkout(), sub("active", 110))
    alice = await user(plane)
    assert alice["state"] == "provisioning" and alice["server_id"] == worker.key_id
    assert alice["plan"] == "pro" and alice["billing_status"] == "active" and alice["error"] is None
    assert (alice["stripe_customer_id"], alice["stripe_subscription_id"]) == ("cus_1", "sub_1")
    spec = (await worker.assignments()).body["containers"][0]
    assert spec["resources"]["memory_mb"] == 2048
    access = (await plane.admin("GET", "/v1/users/alice/access"))[1]
    assert access["url"] == "https://alice.clawfleet.localhost"
    assert spec["env"]["OPENCLAW_GATEWAY_TOKEN"] == access["token"] and len(access["token"]) >= 32


async def replanned(control: ControlPlane) -> list[str]:
    _, evs = await control.admin("GET", "/v1/events?limit=1000")
    return [e["message"] for e in evs["events"] if e["kind"] == "user_replanned"]


async def test_a_plan_change_replaces_the_running_container_with_the_new_limits(
    plane: ControlPlane,
) -> None:
    worker = await registered(plane)
    default = "price_clawfleet_default"
    await apply(plane, checkout(), sub("active", 110, price=default))
    before = (await worker.assignments()).body
    assert before["containers"][0]["resources"]["memory_mb"] == DEFAULT_PLAN.memory_mb
    await worker.heartbeat([{"user_id": "alice", **HEALTHY}])
    assert (await user(plane))["state"] == "running"
    await apply(plane, sub("active", 120, price=default))  # a renewal: nothing to replace
    assert (await worker.assignments()).body["generation"] == before["generation"]
    await apply(plane, sub("active", 130))  # the upgrade to pro
    after = (await worker.assignments(after=before["generation"])).body
    (spec,) = after["containers"]
    assert spec["resources"]["memory_mb"] == PRO.memory_mb and spec["resources"]["cpus"] == PRO.cpus
    assert spec["spec_hash"] != before["containers"][0]["spec_hash"]
    assert (await user(plane))["server_id"] == worker.key_id  # replaced in place, not moved
    assert await replanned(plane) == [
        "plan default -> pro: its container is replaced with the new plan's limits"
    ]
    await apply(plane, sub("active", 140, price=default))  # and back down
    down = (await worker.assignments(after=after["generation"])).body
    assert down["containers"][0]["resources"]["memory_mb"] == DEFAULT_PLAN.memory_mb


async def test_a_plan_the_server_cannot_hold_is_applied_and_said_for_the_operator(
    control_factory: Callable[..., ControlPlane],
) -> None:
    huge = Plan("huge", 16384, 2.0, 1024, 20, ("price_huge",))
    plane = control_factory(plans=PLANS | {"huge": huge})
    await plane.start()
    worker = await registered(plane)  # 8 GB
    await apply(plane, checkout(), sub("active", 110))
    before = (await worker.assignments()).body
    await apply(plane, sub("active", 120, price="price_huge"))
    after = (await worker.assignments(after=before["generation"])).body
    assert after["containers"][0]["resources"]["memory_mb"] == huge.memory_mb
    assert await replanned(plane) == [
        "plan pro -> huge: its container is replaced with the new plan's limits; "
        f"{worker.key_id} is now overfull: move the user to a server with room"
    ]


async def test_a_plan_change_of_a_suspended_user_waits_for_its_resume(plane: ControlPlane) -> None:
    worker = await registered(plane)
    await apply(plane, checkout(), sub("active", 110), sub("unpaid", 120))
    assert (await user(plane))["state"] == "suspended"
    generation = (await worker.assignments()).body["generation"]
    await apply(plane, sub("unpaid", 130, price="price_clawfleet_default"))
    assert (await user(plane))["plan"] == "default"
    assert (await worker.assignments()).body["generation"] == generation
    assert await replanned(plane) == []


async def test_subscription_before_checkout_is_linked_not_undone(plane: ControlPlane) -> None:
    await registered(plane)
    await apply(plane, sub("active", 110))  # nobody to link it to yet
    assert (await plane.admin("GET", "/v1/users"))[1]["users"] == []
    await apply(plane, checkout(at=100))  # an older checkout links; it does not reset state
    alice = await user(plane)
    assert alice["state"] == "provisioning" and alice["billing_status"] == "active"


async def test_out_of_order_deleted_before_created_ends_deprovisioned(plane: ControlPlane) -> None:
    await registered(plane)
    await apply(plane, sub("deleted", 300), sub("active", 100), checkout(at=90))
    alice = await user(plane)
    assert alice["state"] == "deprovisioned" and alice["billing_status"] == "deleted"
    assert alice["server_id"] is None


async def test_duplicates_change_nothing(plane: ControlPlane) -> None:
    await registered(plane)
    await apply(plane, checkout(), sub("active", 110))
    first = await user(plane)
    _, evs = await plane.admin("GET", "/v1/events?limit=1000")
    await apply(plane, checkout(), sub("active", 110), sub("active", 110))
    assert await user(plane) == first
    _, again = await plane.admin("GET", "/v1/events?limit=1000")
    assert len(again["events"]) == len(evs["events"])


async def test_unknown_price_is_an_error_and_the_user_is_not_started(plane: ControlPlane) -> None:
    await registered(plane)
    await apply(plane, checkout(), sub("active", 110, price="price_mystery"))
    alice = await user(plane)
    assert alice["state"] == "pending" and alice["server_id"] is None
    assert "price_mystery" in alice["error"]
    _, evs = await plane.admin("GET", "/v1/events")
    assert any(
        e["kind"] == "billing_error" and "price_mystery" in e["message"] for e in evs["events"]
    )
    # Fixed at Stripe (a known price): the user starts.
    await apply(plane, sub("active", 120, price="price_pro"))
    assert (await user(plane))["state"] == "provisioning"


async def test_suspend_and_resume_on_the_same_server(plane: ControlPlane) -> None:
    worker = await registered(plane)
    await apply(plane, checkout(), sub("active", 110))
    await worker.heartbeat([{"user_id": "alice", **HEALTHY}])
    server_id = (await user(plane))["server_id"]
    await apply(plane, sub("unpaid", 120))
    alice = await user(plane)
    assert alice["state"] == "suspended" and alice["server_id"] == server_id
    assert (await worker.assignments()).body["containers"] == []  # the container stops
    # Its room stays reserved while suspended.
    _, srv = await plane.admin("GET", f"/v1/servers/{server_id}")
    assert srv["capacity"]["memory_mb"]["used"] == 2048
    await apply(plane, sub("active", 130))
    alice = await user(plane)
    assert alice["state"] == "provisioning" and alice["server_id"] == server_id
    assert [c["user_id"] for c in (await worker.assignments()).body["containers"]] == ["alice"]


async def test_past_due_runs_through_the_grace_then_suspends(
    control_factory: Callable[..., ControlPlane],
) -> None:
    plane = control_factory(
        plans=PLANS, past_due_grace=600.0, heartbeat_interval=1.0, dead_after=3600.0
    )
    await plane.start()
    await registered(plane)
    before = time.time()
    await apply(plane, checkout(), sub("past_due", 110))
    assert (await user(plane))["state"] == "provisioning"
    assert plane.app is not None
    # The sweep at an injected time: the grace runs on the clock, not in the test's wall time.
    await plane.app[FLEET].sweep(now=before + 590)
    assert (await user(plane))["state"] == "provisioning"  # still within the grace
    await plane.app[FLEET].sweep(now=time.time() + 601)
    alice = await user(plane)
    assert alice["state"] == "suspended" and alice["billing_status"] == "past_due"


async def test_admin_suspend_resume_and_delete(plane: ControlPlane) -> None:
    await registered(plane)
    await plane.admin("POST", "/v1/users", {"user_id": "bo", "subdomain": "bo"})
    status, body = await plane.admin("POST", "/v1/users/bo/suspend")
    assert status == 200 and body["state"] == "suspended"
    status, body = await plane.admin("POST", "/v1/users/bo/resume")
    assert status == 200 and body["state"] == "provisioning"
    status, body = await plane.admin("DELETE", "/v1/users/bo")
    assert status == 200 and body["state"] == "deprovisioned" and body["purge_after"]
    status, _ = await plane.admin("POST", "/v1/users/nobody/suspend")
    assert status == 404


async def test_rotating_the_token_replaces_the_container_spec(plane: ControlPlane) -> None:
    worker = await registered(plane)
    await plane.admin("POST", "/v1/users", {"user_id": "cy", "subdomain": "cy"})
    before = (await worker.assignments()).body
    status, access = await plane.admin("POST", "/v1/users/cy/rotate-token")
    assert status == 200
    after = (await worker.assignments(after=before["generation"])).body
    assert after["containers"][0]["env"]["OPENCLAW_GATEWAY_TOKEN"] == access["token"]
    assert after["containers"][0]["spec_hash"] != before["containers"][0]["spec_hash"]


async def test_deprovisioned_data_is_purged_after_retention(
    control_factory: Callable[..., ControlPlane],
) -> None:
    # A day of retention, crossed by sweeps at injected times; dead_after outlasts it so
    # the purge goes through the worker, not through its server being declared gone.
    plane = control_factory(retention_days=1.0, heartbeat_interval=1.0, dead_after=10 * 86400.0)
    await plane.start()
    assert plane.app is not None
    fleet = plane.app[FLEET]
    worker = await registered(plane)
    await plane.admin("POST", "/v1/users", {"user_id": "di", "subdomain": "di"})
    before = time.time()
    await plane.admin("DELETE", "/v1/users/di")
    after = time.time()
    await fleet.sweep(now=before + 86400 - 1)  # retention not yet over
    assert (await worker.assignments()).body["purge"] == []
    assert (await user(plane, "di"))["state"] == "deprovisioned"  # readable until purged
    await fleet.sweep(now=after + 86400 + 1)
    reply = await worker.assignments()
    assert reply.body["purge"] == ["di"]
    assert (await user(plane, "di"))["state"] == "deprovisioned"  # until the worker applies it
    await worker.heartbeat(generation=reply.body["generation"])
    await fleet.sweep(now=after + 86400 + 2)
    status, _ = await plane.admin("GET", "/v1/users/di")
    assert status == 404
    _, evs = await plane.admin("GET", "/v1/events")
    assert any(e["kind"] == "user_purged" for e in evs["events"])


async def test_another_worker_never_sees_the_token(plane: ControlPlane) -> None:
    a = await registered(plane, "a")
    b = await registered(plane, "b")
    await plane.admin("POST", "/v1/users", {"user_id": "ed", "subdomain": "ed"})
    _, access = await plane.admin("GET", "/v1/users/ed/access")
    replies = [await w.assignments() for w in (a, b)]
    texts = [str(r.body) for r in replies]
    assert sum(access["token"] in t for t in texts) == 1


@pytest.mark.parametrize(
    ("price", "expected"),
    [
        ("price_pro", "pro"),
        ("price_clawfleet_default", "default"),  # explicit synthetic id (simulate-payment)
        ("price_clawfleet_pro", "pro"),
        ("price_clawfleet_gold", None),  # no such plan
        ("price_1Pgaf", None),  # a real-looking unknown price is never defaulted
    ],
)
def test_plan_for_price(price: str, expected: str | None) -> None:
    from control.billing.rules import plan_for_price

    plan = plan_for_price(PLANS, price)
    assert (plan.name if plan else None) == expected


# --- pure decisions (control/billing/rules.py) ----------------------------------------------
@pytest.mark.parametrize(
    ("billing", "hold", "expected"),
    [
        ("run", None, "run"),
        ("wait", None, "wait"),
        ("suspend", None, "suspend"),
        ("deprovision", None, "deprovision"),
        ("run", "suspended", "suspend"),
        ("wait", "suspended", "suspend"),
        ("suspend", "suspended", "suspend"),
        ("deprovision", "suspended", "deprovision"),  # a subscription's end still ends it
        ("run", "deleted", "deprovision"),
        ("wait", "deleted", "deprovision"),
        ("suspend", "deleted", "deprovision"),
        ("deprovision", "deleted", "deprovision"),
    ],
)
def test_combine(billing: Target, hold: Hold | None, expected: Target) -> None:
    assert combine(billing, hold) == expected


@pytest.mark.parametrize(
    ("hold", "action", "expected"),
    [
        (None, "suspend", "suspended"),
        (None, "delete", "deleted"),
        (None, "resume", None),
        ("suspended", "suspend", "suspended"),
        ("suspended", "delete", "deleted"),
        ("suspended", "resume", None),
        ("deleted", "suspend", "deleted"),  # a suspend never softens a delete
        ("deleted", "delete", "deleted"),
        ("deleted", "resume", None),
    ],
)
def test_next_hold(hold: Hold | None, action: OperatorAction, expected: Hold | None) -> None:
    assert next_hold(hold, action) == expected


OPERATOR_ACTIONS: dict[str, OperatorAction] = {
    "suspend": "suspend",
    "delete": "delete",
    "resume": "resume",
}
BILLING_VERDICTS: dict[str, Target] = {
    "run": "run",
    "suspend-billing": "suspend",
    "end": "deprovision",
}


@pytest.mark.parametrize(
    "order", list(itertools.permutations([*OPERATOR_ACTIONS, *BILLING_VERDICTS]))
)
def test_every_ordering_keeps_the_operators_order(order: tuple[str, ...]) -> None:
    """After every step: a delete not yet resumed means deprovisioned, a suspend not
    yet resumed means not running, and without a hold billing alone decides."""
    hold: Hold | None = None
    billing: Target = "run"
    standing: str | None = None  # the operator's order in force (the oracle)
    for step in order:
        if step in OPERATOR_ACTIONS:
            hold = next_hold(hold, OPERATOR_ACTIONS[step])
            if step == "resume":
                standing = None
            elif step == "delete" or standing != "delete":
                standing = step
        else:
            billing = BILLING_VERDICTS[step]
        goal = combine(billing, hold)
        if standing == "delete":
            assert goal == "deprovision"
        elif standing == "suspend":
            assert goal == ("deprovision" if billing == "deprovision" else "suspend")
        else:
            assert goal == billing


def _owner(
    customer: str | None, by_stripe: bool = True, sub: str | None = "sub_1", ended: bool = False
) -> Owner:
    return Owner(customer, by_stripe, sub, ended)


@pytest.mark.parametrize(
    ("owner", "payer", "expected"),
    [
        # An operator's user: no customer, not created by a payment.
        (_owner(None, by_stripe=False, sub=None), Payer("cus_1", "sub_9", False), "conflict"),
        (_owner(None, by_stripe=False, sub=None), Payer(None, None, False), "conflict"),
        # Created by a payment that named no customer yet: the first customer links.
        (_owner(None, sub=None), Payer("cus_1", "sub_1", False), "link"),
        # Another customer's user.
        (_owner("cus_1"), Payer("cus_2", "sub_2", False), "conflict"),
        (_owner("cus_1"), Payer(None, None, False), "conflict"),
        (_owner("cus_1"), Payer("cus_2", "sub_1", False), "conflict"),
        # Its own customer.
        (_owner("cus_1"), Payer("cus_1", "sub_1", False), "link"),
        (_owner("cus_1"), Payer("cus_1", None, False), "link"),  # a checkout without subscription
        (_owner("cus_1", sub=None), Payer("cus_1", "sub_2", False), "link"),
        (_owner("cus_1", ended=True), Payer("cus_1", "sub_2", False), "relink"),  # renewal
        (_owner("cus_1"), Payer("cus_1", "sub_2", False), "conflict"),  # two live subscriptions
        (_owner("cus_1"), Payer("cus_1", "sub_0", True), "ignore"),  # an old, ended one
    ],
)
def test_claim(owner: Owner, payer: Payer, expected: str) -> None:
    verdict, why = claim(owner, payer)
    assert verdict == expected
    assert bool(why) == (verdict != "link")


def _s(at: int, status: str, previous: str | None = None, period: int | None = None) -> SubState:
    return SubState(at, status, previous, period)


@pytest.mark.parametrize(
    ("new", "old", "expected"),
    [
        (_s(2, "active"), _s(1, "unpaid"), True),  # later wins
        (_s(1, "active"), _s(2, "unpaid"), False),
        (_s(1, "deleted"), _s(2, "active"), True),  # an end is final, whatever the time
        (_s(2, "active"), _s(1, "canceled"), False),
        (_s(2, "active"), _s(1, "incomplete_expired"), False),
        (_s(1, "deleted"), _s(2, "canceled"), True),  # gone beats cancelled
        (_s(2, "canceled"), _s(1, "deleted"), False),
        (_s(5, "active"), _s(5, "active"), True),  # the same state again: harmless
        # Within one second: the other's previous status is the older state.
        (_s(5, "unpaid", "active"), _s(5, "active", "unpaid"), False),
        (_s(5, "active", "unpaid"), _s(5, "unpaid", "active"), True),
        (_s(5, "past_due", "active"), _s(5, "unpaid", "past_due"), False),
        (_s(5, "unpaid", "past_due"), _s(5, "past_due", "active"), True),
        # ... else a later billing period ...
        (_s(5, "past_due", None, 200), _s(5, "active", None, 100), True),
        (_s(5, "active", None, 100), _s(5, "past_due", None, 200), False),
        # ... else a subscription's usual progress.
        (_s(5, "active"), _s(5, "incomplete"), True),
        (_s(5, "incomplete"), _s(5, "active"), False),
        (_s(5, "active"), _s(5, "past_due"), True),
        (_s(5, "past_due"), _s(5, "unpaid"), True),
    ],
)
def test_supersedes(new: SubState, old: SubState, expected: bool) -> None:
    assert supersedes(new, old) is expected
