"""Who a payment may act on, and operators' orders against billing events, through
the real control plane (control/billing/rules.py via Fleet.apply_billing and the admin API).

Issue 9: a payment never takes over a user linked to another customer or created by
an operator. Issue 10: an operator's suspend or delete is not undone by any billing
event, in any order; within one second the subscription's own payload orders states.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from control.appkeys import FLEET
from control.billing.rules import Target
from control.users import records as users_module
from tests.fixtures import ControlPlane
from tests.test_billing import PLANS, Fact, apply, checkout, sub, user
from tests.test_protocol import registered


@pytest.fixture
async def plane(control_factory: Callable[..., ControlPlane]) -> ControlPlane:
    control = control_factory(plans=PLANS, past_due_grace=3600.0, retention_days=30.0)
    await control.start()
    return control


def invoice(kind: str, at: int, **kw: Any) -> Fact:
    return Fact(
        f"evt_{kind}_{at}_{kw.get('subscription_id', 'sub_1')}", f"invoice.{kind}", at, **kw
    )


async def events_of(plane: ControlPlane, kind: str) -> list[dict[str, Any]]:
    _, body = await plane.admin("GET", "/v1/events?limit=1000")
    return [e for e in body["events"] if e["kind"] == kind]


EVIL = {"customer_id": "cus_evil", "subscription_id": "sub_evil"}


# --- issue 9: a payment never takes over someone else's user ------------------------
async def test_a_checkout_naming_an_operators_user_is_a_conflict_not_a_link(
    plane: ControlPlane,
) -> None:
    await registered(plane)
    status, _ = await plane.admin("POST", "/v1/users", {"user_id": "vic", "subdomain": "vic"})
    assert status == 201
    before = await user(plane, "vic")
    await apply(plane, checkout(100, user="vic", **EVIL), sub("active", 110, **EVIL))
    await apply(plane, sub("deleted", 120, **EVIL))  # the payer cancels
    vic = await user(plane, "vic")
    assert vic["state"] == before["state"] == "provisioning"
    assert vic["server_id"] == before["server_id"]
    assert (vic["stripe_customer_id"], vic["stripe_subscription_id"]) == (None, None)
    assert "cus_evil" in (vic.get("billing_conflict") or "")
    [conflict] = await events_of(plane, "billing_conflict")
    assert conflict["user_id"] == "vic" and "operator" in conflict["message"]


@pytest.mark.parametrize(
    "claim",
    [
        lambda at: checkout(at, user="alice", **EVIL),  # client_reference_id from a URL
        lambda at: replace(sub("active", at, **EVIL), user_id="alice"),  # subscription metadata
        lambda at: invoice("paid", at, user_id="alice", **EVIL),  # invoice's metadata snapshot
    ],
    ids=["checkout", "subscription-metadata", "invoice-metadata"],
)
async def test_a_payment_naming_another_customers_user_changes_nothing(
    plane: ControlPlane, claim: Callable[[int], Fact]
) -> None:
    await registered(plane)
    await apply(plane, checkout(100), sub("active", 110))  # alice: cus_1 / sub_1
    before = await user(plane)
    await apply(plane, claim(200), sub("active", 210, **EVIL), sub("deleted", 220, **EVIL))
    alice = await user(plane)
    same = ("state", "server_id", "stripe_customer_id", "stripe_subscription_id", "plan")
    assert {k: alice[k] for k in same} == {k: before[k] for k in same}
    assert "cus_1" in (alice.get("billing_conflict") or "")
    conflicts = await events_of(plane, "billing_conflict")
    assert conflicts and all(e["user_id"] == "alice" for e in conflicts)
    # At-least-once delivery: the same conflicting fact again records nothing new.
    await apply(plane, claim(200))
    assert len(await events_of(plane, "billing_conflict")) == len(conflicts)


async def test_the_same_customer_renews_its_own_user_with_a_new_subscription(
    plane: ControlPlane,
) -> None:
    await registered(plane)
    await apply(plane, checkout(100), sub("active", 110), sub("deleted", 120))
    assert (await user(plane))["state"] == "deprovisioned"
    renewal = {"customer_id": "cus_1", "subscription_id": "sub_2"}
    await apply(plane, checkout(200, **renewal), sub("active", 210, **renewal))
    alice = await user(plane)
    assert alice["state"] == "provisioning" and alice["stripe_subscription_id"] == "sub_2"
    # A late redelivery of the old subscription's end does not touch the renewed user.
    await apply(plane, replace(sub("deleted", 120), user_id="alice", event_id="evt_late"))
    assert (await user(plane))["state"] == "provisioning"
    assert await events_of(plane, "billing_conflict") == []


# --- issue 10: operators' orders are not undone by billing events --------------------
async def test_an_operators_suspend_survives_invoice_paid(plane: ControlPlane) -> None:
    await registered(plane)
    await apply(plane, checkout(100), sub("active", 110))
    server = (await user(plane))["server_id"]
    status, body = await plane.admin("POST", "/v1/users/alice/suspend")
    assert status == 200 and body["state"] == "suspended"
    await apply(plane, sub("active", 130), invoice("paid", 131, user_id="alice"))
    alice = await user(plane)
    assert alice["state"] == "suspended" and alice["server_id"] == server
    assert (alice.get("hold"), alice.get("billing_state")) == ("suspended", "run")


async def test_an_operators_delete_survives_invoice_payment_failed(plane: ControlPlane) -> None:
    await registered(plane)
    await apply(plane, checkout(100), sub("active", 110))
    status, body = await plane.admin("DELETE", "/v1/users/alice")
    assert status == 200 and body["state"] == "deprovisioned"
    await apply(plane, sub("past_due", 140), invoice("payment_failed", 141, user_id="alice"))
    await apply(plane, sub("active", 150), invoice("paid", 151))
    alice = await user(plane)
    assert alice["state"] == "deprovisioned" and alice["server_id"] is None
    assert alice.get("hold") == "deleted"


async def test_resume_lifts_the_hold_and_billing_decides(plane: ControlPlane) -> None:
    await registered(plane)
    await apply(plane, checkout(100), sub("active", 110))
    await plane.admin("POST", "/v1/users/alice/suspend")
    await apply(plane, sub("unpaid", 120))
    status, body = await plane.admin("POST", "/v1/users/alice/resume")
    assert status == 200 and body["state"] == "suspended"  # billing says it may not run
    assert (body.get("hold"), body.get("billing_state")) == (None, "suspend")
    await apply(plane, sub("active", 130))
    assert (await user(plane))["state"] == "provisioning"


async def test_a_deleted_users_subscription_never_creates_it_again(plane: ControlPlane) -> None:
    assert plane.app is not None
    fleet = plane.app[FLEET]
    await apply(plane, checkout(100), sub("active", 110))
    await plane.admin("DELETE", "/v1/users/alice")
    await fleet.store.write(lambda conn: users_module.advance_purges(conn, time.time() + 10**9))
    assert (await plane.admin("GET", "/v1/users/alice"))[0] == 404
    paid = replace(sub("active", 300), user_id="alice")
    await apply(plane, paid, invoice("paid", 301, user_id="alice"))
    assert (await plane.admin("GET", "/v1/users/alice"))[0] == 404


# Every ordering of these operator actions and billing events, each on its own user.
STEPS = ("suspend", "delete", "resume", "paid", "unpaid")


def expected_state(steps: tuple[str, ...]) -> tuple[str, list[str]]:
    """The final state, and the state required after each step: a delete holds until
    a resume; a suspend holds until a resume (and never softens a delete); billing
    decides only what an unheld user may do."""
    hold, billing, during = None, "active", []
    for step in steps:
        if step == "resume":
            hold = None
        elif step == "delete":
            hold = "deleted"
        elif step == "suspend":
            hold = hold or "suspended"
        else:
            billing = "active" if step == "paid" else "unpaid"
        if hold == "deleted":
            during.append("deprovisioned")
        elif hold == "suspended" or billing == "unpaid":
            during.append("suspended")
        else:
            during.append("pending")  # may run; no worker in this test
    return during[-1], during


async def test_every_ordering_of_operator_actions_and_billing_events(
    plane: ControlPlane,
) -> None:
    assert plane.app is not None
    fleet = plane.app[FLEET]
    actions: dict[str, Target] = {"suspend": "suspend", "delete": "deprovision", "resume": "run"}
    failures = []
    for n, steps in enumerate(itertools.permutations(STEPS)):
        who = {"customer_id": f"cus_{n}", "subscription_id": f"sub_{n}"}
        uid = f"u{n}"
        await apply(plane, checkout(100, user=uid, **who), sub("active", 110, **who))
        _, during = expected_state(steps)
        for i, step in enumerate(steps):
            at = 200 + 10 * i
            if step in actions:
                await fleet.set_user_target(uid, actions[step], reason="operator")
            else:
                status = "active" if step == "paid" else "unpaid"
                kind = "paid" if step == "paid" else "payment_failed"
                await apply(plane, sub(status, at, **who), invoice(kind, at + 1, **who))
            row = await fleet.store.fetch_one("SELECT state FROM users WHERE id = ?", (uid,))
            assert row is not None
            if row["state"] != during[i]:
                failures.append((steps, i, row["state"], during[i]))
                break
    assert failures == [], failures[:5]
