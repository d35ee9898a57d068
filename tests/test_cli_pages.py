"""`clawfleet servers` and `clawfleet users` follow the admin API's cursors to the end
of the listing, and pass their filters on (issue 16)."""

from __future__ import annotations

import json

import pytest

from control.cli import commands
from tests.fixtures import ControlPlane
from tests.test_admin_pages import add_users
from tests.test_cli import as_operator, clean_env, cli, parse_table
from tests.test_protocol import registered

__all__ = ["as_operator", "clean_env"]  # the fixtures, used by name


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pages of two rows: five users take three requests, as 1,500 would with 500.
    monkeypatch.setattr(commands, "PAGE_LIMIT", 2)


@pytest.mark.usefixtures("small_pages")
async def test_users_lists_every_page(
    as_operator: ControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    names = ["u1", "u2", "u3", "u4", "u5"]
    await add_users(as_operator, *names)
    run = await cli(capsys, "users")
    assert run.code == 0, run.err
    assert [row["USER"] for row in parse_table(run.out)] == names
    run = await cli(capsys, "users", "--json")
    assert run.code == 0, run.err
    body = json.loads(run.out)
    assert [u["user_id"] for u in body["users"]] == names
    assert body["next_cursor"] is None


@pytest.mark.usefixtures("small_pages")
async def test_servers_lists_every_page_and_filters(
    as_operator: ControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    workers = [await registered(as_operator, f"w{i}") for i in range(3)]
    await as_operator.admin("POST", f"/v1/servers/{workers[0].key_id}/cordon")
    await add_users(as_operator, "a", "b", "c")
    run = await cli(capsys, "servers")
    assert run.code == 0, run.err
    assert sorted(row["ID"] for row in parse_table(run.out)) == sorted(w.key_id for w in workers)
    run = await cli(capsys, "servers", "--status", "dead")
    assert run.code == 0, run.err
    assert run.out.startswith("no servers\n")
    _, placed = await as_operator.admin("GET", "/v1/users/a")
    run = await cli(capsys, "users", "--server", placed["server_id"], "--state", "provisioning")
    assert run.code == 0, run.err
    rows = parse_table(run.out)
    assert rows and all(row["SERVER"] == placed["server_id"] for row in rows)
    run = await cli(capsys, "users", "--state", "nonsense")
    assert run.code == 1 and "state: unknown nonsense" in run.err
