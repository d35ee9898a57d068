"""Two local workers on one machine (issue 13, point 6): LOCAL_MAX_SERVERS lets the
autoscaler run them; they share the users' volume files and one router, and each has
its own sign-in verifier port. Real processes stand in for the agent and Traefik (a
`sleep` each), so the router's life is checked without Docker."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agent.config import parse_env_file
from control.capacity.providers import build_provider
from control.capacity.providers.base import CreateRequest
from control.capacity.providers.local import LocalProvider, _alive
from control.capacity.providers.local_machine import mounts_under, worker_ids
from control.settings import Settings

BASE = Settings(admin_token="a" * 32, internal_secret="b" * 32)
USER_DATA = "CONTROL_URL=http://127.0.0.1:1\nBOOTSTRAP_TOKEN=tok.secret\n"


@pytest.mark.parametrize("count", [1, 2])
def test_local_max_servers_is_what_the_local_provider_can_hold(tmp_path: Path, count: int) -> None:
    settings = BASE.with_overrides(local_workers_dir=str(tmp_path), local_max_servers=count)
    provider = build_provider(settings)
    assert isinstance(provider, LocalProvider) and provider.max_servers == count


def sleeper(folder: Path, name: str) -> Path:
    """An executable that outlives its call, as the agent and Traefik do."""
    path = folder / name
    path.write_text("#!/bin/sh\nexec sleep 60\n")
    path.chmod(0o755)
    return path


def test_workers_share_volume_files_and_one_router_with_their_own_verifier_port(
    tmp_path: Path,
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sleeper(bin_dir, "traefik")  # found next to the interpreter, as pip installs it
    root = tmp_path / "workers"
    provider = LocalProvider(
        str(root), python=str(sleeper(bin_dir, "python")), router_address="127.0.0.1:1"
    )
    try:
        for name in ("w1", "w2"):
            provider._create(CreateRequest(f"srv-{name}", name, "local", "local", USER_DATA, {}))
        envs = [parse_env_file((root / n / "agent.env").read_text()) for n in ("w1", "w2")]
        assert {e["LOOP_VOLUME_DIR"] for e in envs} == {str(root.resolve() / "volumes")}
        assert {e["TRAEFIK_DYNAMIC_DIR"] for e in envs} == {str(root.resolve() / "traefik")}
        assert envs[0]["AUTH_PORT"] != envs[1]["AUTH_PORT"]
        router = int(json.loads((root / "router.json").read_text())["pid"])
        provider._delete("w1")
        assert _alive(router)  # w2 still serves users through it
        provider._delete("w2")
        assert not _alive(router) and not (root / "router.json").exists()
    finally:
        for server in provider._list({}):
            provider._delete(server.provider_id)


def test_a_deleted_workers_ids_and_mounts_are_read_from_its_home(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    assert worker_ids(tmp_path) == []  # never registered: nothing of its own
    creds = {"worker_id": "srv-new", "secret": "s", "previous": ["srv-old"]}
    (state / "credentials.json").write_text(json.dumps(creds))
    assert worker_ids(tmp_path) == ["srv-new", "srv-old"]
    mounts = state / "mounts"
    info = "\n".join(
        f"{n} 1 7:{n} / {target} rw - ext4 /dev/loop{n} rw"
        for n, target in enumerate([f"{mounts}/a", f"{mounts}/a/sub", "/elsewhere", f"{mounts}/b"])
    )
    assert mounts_under(info, mounts) == [f"{mounts}/b", f"{mounts}/a"]


async def test_two_creates_of_one_name_at_once_start_one_agent(tmp_path: Path) -> None:
    """The autoscaler's retry of an unconfirmed create and the create itself can meet (a
    CI run saw two agents share one server's state, and its user never started): the
    second call adopts what the first started."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    started = tmp_path / "started"
    python = bin_dir / "python"
    python.write_text(f"#!/bin/sh\necho $$ >> {started}\nexec sleep 60\n")
    python.chmod(0o755)
    provider = LocalProvider(str(tmp_path / "workers"), python=str(python))
    request = CreateRequest("srv-w1", "w1", "local", "local", USER_DATA, {})
    try:
        made = await asyncio.gather(*(provider.create(request) for _ in range(4)))
        assert {m.provider_id for m in made} == {"w1"}
        for _ in range(50):  # the shells write their pid as they start
            if started.exists():
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert len(started.read_text().split()) == 1
    finally:
        for server in provider._list({}):
            provider._delete(server.provider_id)
