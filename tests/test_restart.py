"""A restart asked for by the operator (admin API, CLI) or the customer (tests/
test_portal_account.py): the user's container is replaced on its server with its state,
through the spec's hash, which covers the restart count. A user never restarted keeps
the hash it had; only a placed user can be restarted."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures import ControlPlane
from tests.test_cli import as_operator, clean_env, cli  # noqa: F401 (fixtures)
from tests.test_protocol import registered
from tests.worker import FakeWorker


async def spec_of(worker: FakeWorker, after: int = 0) -> tuple[int, dict[str, Any]]:
    reply = await worker.assignments(after=after)
    assert reply.status == 200, reply.body
    (spec,) = reply.body["containers"]
    return int(reply.body["generation"]), spec


async def test_a_restart_replaces_the_container_with_its_state(control: ControlPlane) -> None:
    worker = await registered(control)
    status, _ = await control.admin("POST", "/v1/users", {"user_id": "alice", "subdomain": "a"})
    assert status == 201
    generation, before = await spec_of(worker)
    assert "clawfleet.restart" not in before["labels"]  # never restarted: the hash it had

    status, view = await control.admin("POST", "/v1/users/alice/restart")
    assert status == 200 and view["user_id"] == "alice"
    later, after = await spec_of(worker, generation)  # the long-poll returns with it
    assert later > generation
    assert after["labels"]["clawfleet.restart"] == "1"
    assert after["spec_hash"] != before["spec_hash"]
    # Everything the container keeps is the same: its volumes, its files, its route.
    same = ("volumes", "env", "image", "route_host", "config_files", "secret_files")
    assert {k: after.get(k) for k in same} == {k: before.get(k) for k in same}
    _, events = await control.admin("GET", "/v1/events?limit=50")
    assert [e["user_id"] for e in events["events"] if e["kind"] == "user_restarted"] == ["alice"]


@pytest.mark.parametrize(
    ("user_id", "status", "code"), [("bob", 409, "not_running"), ("nobody", 404, "not_found")]
)
async def test_only_a_placed_user_restarts(
    control: ControlPlane, user_id: str, status: int, code: str
) -> None:
    created, _ = await control.admin("POST", "/v1/users", {"user_id": "bob", "subdomain": "b"})
    assert created == 201  # pending: no worker has room
    got, reply = await control.admin("POST", f"/v1/users/{user_id}/restart")
    assert (got, reply["error"]["code"]) == (status, code)


async def test_the_cli_restarts_a_user(
    as_operator: ControlPlane,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    worker = await registered(as_operator)
    await as_operator.admin("POST", "/v1/users", {"user_id": "alice", "subdomain": "a"})
    generation, _ = await spec_of(worker)
    run = await cli(capsys, "restart", "alice")
    assert run.code == 0, run.err
    assert "alice" in run.out
    _, spec = await spec_of(worker, generation)
    assert spec["labels"]["clawfleet.restart"] == "1"
