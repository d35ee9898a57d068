"""`make run`'s router listens on 127.0.0.1, where every browser is loopback: the local
provider tells its agent which client address the routes claim (agent/traefik.py), and
nothing else ever does."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import parse_env_file
from control.capacity.providers import build_provider
from control.capacity.providers.base import CreateRequest
from control.capacity.providers.local import LocalProvider
from control.settings import Settings, rules

BASE = Settings(admin_token="a" * 32, internal_secret="b" * 32)
USER_DATA = "CONTROL_URL=http://127.0.0.1:1\nBOOTSTRAP_TOKEN=tok.secret\n"


@pytest.mark.parametrize(
    ("router", "claimed"),
    [("127.0.0.1:8000", rules.LOOPBACK_CLIENT_ADDRESS), ("172.17.0.1:8000", ""), ("", "")],
)
def test_local_provider_claims_an_address_only_behind_a_loopback_router(
    tmp_path: Path, router: str, claimed: str
) -> None:
    settings = BASE.with_overrides(local_router_address=router, local_workers_dir=str(tmp_path))
    provider = build_provider(settings)
    assert isinstance(provider, LocalProvider) and provider.client_address == claimed
    # The agent itself is not started here: `true` stands in for the interpreter.
    made = LocalProvider(str(tmp_path), python="/bin/true", client_address=claimed)
    made._create(CreateRequest("srv-w1", "w1", "local", "local", USER_DATA, {}))
    env = parse_env_file((tmp_path / "w1" / "agent.env").read_text())
    assert env.get("TRAEFIK_CLIENT_ADDRESS", "") == claimed
