"""Per-customer secrets through the admin API: allowed names only, precise 400s, values
never in a reply, an event or a log; a change restarts the container (new spec hash),
and only the secret file of the worker's spec carries the values."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from control.settings import profiles
from tests.fixtures import ControlPlane
from tests.test_protocol import registered

VALUE = "sk-ant-test-" + "s3cr3t" * 6


@pytest.fixture
async def plane(control_factory: Callable[..., ControlPlane]) -> ControlPlane:
    cp = control_factory(tenant_profile=profiles.load("openclaw"))
    await cp.start()
    return cp


async def spec_of(worker: Any, user_id: str) -> dict[str, Any]:
    reply = await worker.assignments()
    assert reply.status == 200, reply.body
    return next(c for c in reply.body["containers"] if c["user_id"] == user_id)


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        ({"NOT_ALLOWED": "x"}, "unknown_secret", "NOT_ALLOWED"),
        ({"ANTHROPIC_API_KEY_2": "x"}, "unknown_secret", "not a name"),  # names match whole
        ({"anthropic_api_key": "x"}, "unknown_secret", "not a name"),
        ({"ANTHROPIC_API_KEY": "a\nB=c"}, "bad_secret", "line break"),
        ({"ANTHROPIC_API_KEY": "a\rb"}, "bad_secret", "line break"),
        ({"ANTHROPIC_API_KEY": "a\0b"}, "bad_secret", "NUL"),
        ({"ANTHROPIC_API_KEY": "a\tb"}, "bad_secret", "control"),
        ({"ANTHROPIC_API_KEY": 'a"b'}, "bad_secret", "double quote"),
        ({"ANTHROPIC_API_KEY": "a'b"}, "bad_secret", "single quote"),
        ({"ANTHROPIC_API_KEY": "a`b"}, "bad_secret", "backtick"),
        ({"ANTHROPIC_API_KEY": "a #b"}, "bad_secret", "'#'"),
        ({"ANTHROPIC_API_KEY": " ab"}, "bad_secret", "blanks"),
        ({"ANTHROPIC_API_KEY": ""}, "bad_secret", "empty"),
        ({"ANTHROPIC_API_KEY": "x" * 4097}, "bad_secret", "4096"),
        ({}, "bad_request", "expected an object"),
        ({"ANTHROPIC_API_KEY": 5}, "malformed_body", ""),
        (["ANTHROPIC_API_KEY"], "malformed_body", ""),
    ],
)
async def test_bad_names_and_values_are_precise_400s(
    plane: ControlPlane, body: Any, code: str, fragment: str
) -> None:
    await plane.admin("POST", "/v1/users", {"user_id": "alice", "subdomain": "alice"})
    status, reply = await plane.admin("PUT", "/v1/users/alice/secrets", body)
    assert status == 400, reply
    assert reply["error"]["code"] == code
    assert fragment in reply["error"]["message"]
    assert "x" * 100 not in reply["error"]["message"]
    _, listed = await plane.admin("GET", "/v1/users/alice/secrets")
    assert listed["names"] == []


async def test_the_longest_value_is_accepted(plane: ControlPlane) -> None:
    await plane.admin("POST", "/v1/users", {"user_id": "alice", "subdomain": "alice"})
    status, _ = await plane.admin("PUT", "/v1/users/alice/secrets", {"GEMINI_API_KEY": "x" * 4096})
    assert status == 200


async def test_secrets_reach_only_the_secret_file_and_restart_the_container(
    plane: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    worker = await registered(plane)
    await plane.admin("POST", "/v1/users", {"user_id": "alice", "subdomain": "alice"})
    before = await spec_of(worker, "alice")
    assert before["secret_files"] == []

    status, reply = await plane.admin(
        "PUT", "/v1/users/alice/secrets", {"ANTHROPIC_API_KEY": VALUE, "OPENAI_API_KEY": "sk-o"}
    )
    assert status == 200
    assert reply["names"] == ["ANTHROPIC_API_KEY", "OPENAI_API_KEY"]
    assert VALUE not in str(reply)
    after = await spec_of(worker, "alice")
    assert after["spec_hash"] != before["spec_hash"]
    assert after["volumes"] == before["volumes"]  # same state volumes: the state is kept
    (secret_file,) = after["secret_files"]
    assert secret_file == {
        "volume": "clawfleet-alice-state",
        "path": ".env",
        "content": f"ANTHROPIC_API_KEY={VALUE}\nOPENAI_API_KEY=sk-o\n",
    }
    elsewhere = {k: v for k, v in after.items() if k != "secret_files"}
    assert VALUE not in str(elsewhere)  # not in env, labels, config

    status, reply = await plane.admin("PUT", "/v1/users/alice/secrets", {"OPENAI_API_KEY": None})
    assert reply["names"] == ["ANTHROPIC_API_KEY"]
    last = await spec_of(worker, "alice")
    assert last["secret_files"][0]["content"] == f"ANTHROPIC_API_KEY={VALUE}\n"

    _, listed = await plane.admin("GET", "/v1/users/alice/secrets")
    assert listed["names"] == ["ANTHROPIC_API_KEY"] and VALUE not in str(listed)
    _, user = await plane.admin("GET", "/v1/users/alice")
    _, events = await plane.admin("GET", "/v1/events?limit=1000")
    assert VALUE not in str(user) and VALUE not in str(events)
    assert any(e["kind"] == "secrets_changed" for e in events["events"])
    assert not [r for r in caplog.records if VALUE in r.getMessage()]


async def test_an_unchanged_value_does_not_restart(plane: ControlPlane) -> None:
    worker = await registered(plane)
    await plane.admin("POST", "/v1/users", {"user_id": "alice", "subdomain": "alice"})
    await plane.admin("PUT", "/v1/users/alice/secrets", {"GEMINI_API_KEY": "g"})
    first = await worker.assignments()
    await plane.admin("PUT", "/v1/users/alice/secrets", {"GEMINI_API_KEY": "g"})
    again = await worker.assignments()
    assert again.body["generation"] == first.body["generation"]


async def test_secrets_need_admin_and_a_known_user(plane: ControlPlane) -> None:
    status, _ = await plane.admin("GET", "/v1/users/alice/secrets", token="wrong-" + "x" * 30)
    assert status == 401
    status, _ = await plane.admin("PUT", "/v1/users/ghost/secrets", {"GEMINI_API_KEY": "g"})
    assert status == 404


async def test_a_profile_without_secrets_refuses_them(control: ControlPlane) -> None:
    await control.admin("POST", "/v1/users", {"user_id": "bob", "subdomain": "bob"})
    status, reply = await control.admin("PUT", "/v1/users/bob/secrets", {"GEMINI_API_KEY": "g"})
    assert status == 400 and reply["error"]["code"] == "no_secrets"  # generic profile


async def test_cli_sets_from_stdin_lists_names_and_prints_login_links(
    plane: ControlPlane, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from tests.test_cli import cli

    monkeypatch.setenv("CLAWFLEET_URL", plane.url)
    monkeypatch.setenv("ADMIN_TOKEN", plane.admin_token)
    await registered(plane)
    await plane.admin("POST", "/v1/users", {"user_id": "alice", "subdomain": "alice"})
    monkeypatch.setattr("sys.stdin", io.StringIO(VALUE + "\n"))
    run = await cli(capsys, "secrets", "alice", "set", "ANTHROPIC_API_KEY")
    assert (run.code, run.out) == (0, "ANTHROPIC_API_KEY\n") and VALUE not in run.out + run.err
    run = await cli(capsys, "secrets", "alice", "list")
    assert run.out == "ANTHROPIC_API_KEY\n"
    run = await cli(capsys, "secrets", "alice", "set", "NOPE")
    assert run.code == 1 and "unknown_secret" in run.err
    run = await cli(capsys, "secrets", "alice", "unset")
    assert run.code == 2
    run = await cli(capsys, "secrets", "alice", "unset", "ANTHROPIC_API_KEY")
    assert (run.code, run.out) == (0, "(none)\n")
    run = await cli(capsys, "login-link", "alice")
    assert (
        run.code == 0
        and run.out.startswith("http")
        and "/_clawfleet/signin?ticket=t1.alice." in run.out
    )
