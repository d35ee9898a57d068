"""`clawfleet user` and `clawfleet users` show both sources of a user's state: what
billing allows and the operator's hold (control/cli.py against the real plane)."""

from __future__ import annotations

import re

import pytest

from tests.fixtures import ControlPlane
from tests.test_cli import as_operator, clean_env, cli, parse_table  # noqa: F401


async def test_user_shows_billing_and_hold(
    as_operator: ControlPlane,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    control = as_operator
    await control.admin("POST", "/v1/users", {"user_id": "ida", "subdomain": "ida"})
    await control.admin("POST", "/v1/users/ida/suspend")
    run = await cli(capsys, "user", "ida")
    assert run.code == 0, run.err
    details = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in run.out.splitlines())
    assert details["state"] == "suspended"
    assert details["operator hold"] == "suspended"
    assert details["billing says"] == "run"  # an operator's user has no billing
    run = await cli(capsys, "users")
    assert run.code == 0, run.err
    [row] = parse_table(run.out)
    assert (row["USER"], row["HOLD"]) == ("ida", "suspended")
    await control.admin("POST", "/v1/users/ida/resume")
    run = await cli(capsys, "users")
    assert parse_table(run.out)[0]["HOLD"] == "-"
