"""Agent features through the real app: a worker whose agent did not declare what users'
specs need never gets such a user, nor a spec it would silently half-run, and the user
shows why; the same worker, upgraded in place (its heartbeat now declares them), starts
receiving. The control plane runs the OpenClaw profile, whose specs need
health-headers, tenant-files and signin-gate (control/users/features.py)."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import pytest

from agent.features import FEATURES
from control.cli.render import render_user
from control.settings import profiles
from tests.fixtures import ControlPlane
from tests.worker import FakeWorker

NEEDS = "health-headers, signin-gate, tenant-files"


@pytest.fixture
async def openclaw(control_factory: Any) -> ControlPlane:
    plane: ControlPlane = control_factory(tenant_profile=profiles.load("openclaw"))
    await plane.start()
    return plane


async def worker(control: ControlPlane, hostname: str, features: list[str]) -> FakeWorker:
    status, reply = await control.admin("POST", "/v1/join-tokens")
    assert status == 201, reply
    w = FakeWorker.with_token(control.url, control.session, reply["token"])
    w.features = features
    assert (await w.register(hostname)).status == 201
    assert (await w.heartbeat()).status == 200
    return w


async def user(control: ControlPlane, user_id: str = "alice") -> dict[str, Any]:
    status, body = await control.admin("GET", f"/v1/users/{user_id}")
    assert status == 200, body
    return body


async def specs(w: FakeWorker) -> list[str]:
    reply = await w.assignments()
    assert reply.status == 200, reply.body
    return [c["user_id"] for c in reply.body["containers"]]


async def events(control: ControlPlane, kind: str) -> list[dict[str, Any]]:
    _, body = await control.admin("GET", "/v1/events?limit=200")
    return [e for e in body["events"] if e["kind"] == kind]


async def test_an_old_agent_gets_no_user_and_an_upgraded_one_does(openclaw: ControlPlane) -> None:
    old = await worker(openclaw, "old", [])
    status, _ = await openclaw.admin("POST", "/v1/users", {"user_id": "alice", "subdomain": "a"})
    assert status == 201
    # Room enough on `old`, but its agent would drop the health headers and the files.
    assert (await user(openclaw))["state"] == "pending"
    assert await specs(old) == []
    _, server = await openclaw.admin("GET", f"/v1/servers/{old.key_id}")
    assert server["features"] == []
    # Upgraded in place: the next heartbeat declares the features (and one this control
    # plane does not know, which is dropped), and the pending user lands there.
    old.features = [*FEATURES, "teleport"]
    assert (await old.heartbeat()).status == 200
    alice = await user(openclaw)
    assert (alice["state"], alice["server_id"], alice["spec_withheld"]) == (
        "provisioning",
        old.key_id,
        None,
    )
    assert await specs(old) == ["alice"]
    _, server = await openclaw.admin("GET", f"/v1/servers/{old.key_id}")
    assert server["features"] == sorted(FEATURES)


async def test_a_new_agent_is_chosen_over_an_old_one_with_more_room(
    openclaw: ControlPlane,
) -> None:
    old = await worker(openclaw, "old", [])
    new = await worker(openclaw, "new", list(FEATURES))
    status, _ = await openclaw.admin("POST", "/v1/users", {"user_id": "alice", "subdomain": "a"})
    assert status == 201
    assert (await user(openclaw))["server_id"] == new.key_id
    assert (await specs(new), await specs(old)) == (["alice"], [])
    # An operator's move onto the old agent is refused with the reason, not half-run.
    status, body = await openclaw.admin("POST", "/v1/users/alice/move", {"server_id": old.key_id})
    assert (status, body["error"]["code"]) == (409, "target_lacks_features"), body
    assert NEEDS in body["error"]["message"]


async def test_a_user_on_an_agent_that_lost_features_is_withheld_with_a_reason(
    openclaw: ControlPlane,
) -> None:
    w = await worker(openclaw, "w", list(FEATURES))
    await openclaw.admin("POST", "/v1/users", {"user_id": "alice", "subdomain": "a"})
    assert await specs(w) == ["alice"]
    generation = (await w.assignments()).body["generation"]
    # The server's agent was replaced by an older one (a reinstall from an old image).
    w.features = []
    assert (await w.heartbeat()).status == 200
    reply = await w.assignments(after=generation)
    assert reply.body["generation"] > generation and reply.body["containers"] == []
    reason = f"worker {w.key_id} runs an agent without {NEEDS}; drain it or upgrade its agent"
    shown = await user(openclaw)
    assert shown["spec_withheld"] == reason
    # `clawfleet user alice` says it too, so an operator sees why alice is not running.
    [line] = [x for x in render_user(shown).splitlines() if x.startswith("spec withheld ")]
    assert line.split(maxsplit=2)[2] == reason
    (withheld,) = await events(openclaw, "user_withheld")
    assert (withheld["user_id"], withheld["message"]) == ("alice", reason)
    (changed,) = [e for e in await events(openclaw, "worker_features") if reason in e["message"]]
    assert changed["server_id"] == w.key_id
    # Upgraded again: the spec comes back, and the reason goes.
    generation = reply.body["generation"]
    w.features = list(FEATURES)
    assert (await w.heartbeat()).status == 200
    reply = await w.assignments(after=generation)
    assert [c["user_id"] for c in reply.body["containers"]] == ["alice"]
    assert (await user(openclaw))["spec_withheld"] is None


async def test_unchanged_features_bump_no_generation(openclaw: ControlPlane) -> None:
    """The hot path only compares: a heartbeat declaring what is stored changes nothing."""
    w = await worker(openclaw, "w", list(FEATURES))
    generation = (await w.assignments()).body["generation"]
    assert (await w.heartbeat()).status == 200
    assert (await w.assignments()).body["generation"] == generation


def forget_features(path: str, server_id: str) -> None:
    """Off the event loop: the control plane's own write must be able to finish first."""
    with sqlite3.connect(path, timeout=10) as db:
        db.execute("UPDATE servers SET features = NULL WHERE id = ?", (server_id,))


async def test_a_worker_registered_before_features_is_told_to_wait_for_its_heartbeat(
    openclaw: ControlPlane,
) -> None:
    """After the upgrade that adds features, a server's row says nothing (NULL) until its
    next heartbeat. A set computed then would drop all its users, so the poll is a 503:
    its agent keeps every container as it is and retries."""
    w = await worker(openclaw, "w", list(FEATURES))
    await openclaw.admin("POST", "/v1/users", {"user_id": "alice", "subdomain": "a"})
    await asyncio.to_thread(forget_features, openclaw.settings.database_path, w.key_id)
    reply = await w.assignments()
    assert (reply.status, reply.body["error"]["code"]) == (503, "features_unknown")
    assert (await w.heartbeat()).status == 200
    assert await specs(w) == ["alice"]
