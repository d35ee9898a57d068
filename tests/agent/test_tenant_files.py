"""Config and secret files in a tenant's volume (agent/tenant_files.py), on a real
directory standing in for a volume's mountpoint (the tests run as root, like the agent)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from agent.tenant_files import (
    ConfigFile,
    FilePlan,
    SecretFile,
    TenantFileError,
    fill_gateway,
    parts_of,
    prepare,
)

OWNED = {"gateway": {"auth": {"mode": "trusted-proxy"}, "trustedProxies": ["{{network_gateway}}"]}}


def test_gateway_placeholder_is_filled_in_strings_lists_and_objects() -> None:
    filled = fill_gateway({"p": ["{{network_gateway}}/32", 1], "s": "x"}, "172.20.0.1")
    assert filled == {"p": ["172.20.0.1/32", 1], "s": "x"}


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./x", "a/."])
def test_paths_that_could_leave_the_volume_are_refused(path: str) -> None:
    with pytest.raises(ValueError):
        parts_of(path)


def plan(
    root: Path, *, config: tuple[ConfigFile, ...] = (), secrets: tuple[SecretFile, ...] = ()
) -> FilePlan:
    return FilePlan(1000, 1001, "172.20.0.1", config, secrets)


def config(root: Path, path: str = "openclaw.json", seed: str = '{"seeded": true}') -> ConfigFile:
    return ConfigFile(root, path, seed, json.dumps(OWNED))


def test_seed_written_when_absent_then_owned_merged(tmp_path: Path) -> None:
    prepare(plan(tmp_path, config=(config(tmp_path),)))
    target = tmp_path / "openclaw.json"
    data = json.loads(target.read_text())
    assert data == {
        "seeded": True,
        "gateway": {"auth": {"mode": "trusted-proxy"}, "trustedProxies": ["172.20.0.1"]},
    }
    info = target.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600 and (info.st_uid, info.st_gid) == (1000, 1001)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a directory as root")
def test_a_fresh_root_owned_volume_is_given_to_the_container_user(tmp_path: Path) -> None:
    """Docker's copy-up of the image's state directory never happens once we wrote into
    the volume first, so the root itself must become the tenant's (found with the real
    gateway: EACCES on mkdir under a root-owned volume)."""
    volume = tmp_path / "volume"
    volume.mkdir(mode=0o755)
    assert volume.stat().st_uid == 0
    prepare(plan(volume, config=(config(volume),)))
    info = volume.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (1000, 1001, 0o700)
    # A root the tenant already owns keeps its owner and mode.
    os.chown(volume, 1234, 1234)
    os.chmod(volume, 0o700)
    prepare(plan(volume, config=(config(volume),)))
    info = volume.stat()
    assert (info.st_uid, info.st_gid) == (1234, 1234)


def test_customer_keys_survive_and_platform_keys_are_put_back(tmp_path: Path) -> None:
    target = tmp_path / "openclaw.json"
    target.write_text(
        json.dumps({"agents": {"model": "mine"}, "gateway": {"auth": {"mode": "none"}, "port": 1}})
    )
    prepare(plan(tmp_path, config=(config(tmp_path),)))
    data = json.loads(target.read_text())
    assert data["agents"] == {"model": "mine"}  # the seed is not applied to an existing file
    assert "seeded" not in data
    assert data["gateway"] == {
        "auth": {"mode": "trusted-proxy"},
        "port": 1,
        "trustedProxies": ["172.20.0.1"],
    }


def test_nested_path_directories_are_made_for_the_container_user(tmp_path: Path) -> None:
    prepare(plan(tmp_path, config=(config(tmp_path, "conf/sub/openclaw.json"),)))
    made = tmp_path / "conf"
    assert (made.stat().st_uid, stat.S_IMODE(made.stat().st_mode)) == (1000, 0o700)
    assert json.loads((made / "sub" / "openclaw.json").read_text())["seeded"] is True


@pytest.mark.parametrize("content", ["[1, 2]", "not json", '"text"', ""])
def test_a_file_that_is_not_an_object_is_left_untouched(tmp_path: Path, content: str) -> None:
    target = tmp_path / "openclaw.json"
    target.write_text(content)
    secret = SecretFile(tmp_path, "secret.json", "NEW-SECRET")
    with pytest.raises(TenantFileError) as caught:
        prepare(plan(tmp_path, config=(config(tmp_path),), secrets=(secret,)))
    assert "openclaw.json" in str(caught.value) and "not a JSON object" in str(caught.value)
    assert target.read_text() == content
    # All or nothing: the secret is not written either.
    assert not (tmp_path / "secret.json").exists()


def test_symlinked_file_is_not_followed_out_of_the_volume(tmp_path: Path) -> None:
    volume, outside = tmp_path / "vol", tmp_path / "outside.json"
    volume.mkdir()
    outside.write_text('{"host": "file"}')
    (volume / "openclaw.json").symlink_to(outside)
    with pytest.raises(TenantFileError):
        prepare(plan(volume, config=(config(volume),)))
    assert outside.read_text() == '{"host": "file"}'


def test_symlinked_directory_is_not_followed_out_of_the_volume(tmp_path: Path) -> None:
    volume, outside = tmp_path / "vol", tmp_path / "outside"
    volume.mkdir()
    outside.mkdir()
    (volume / "conf").symlink_to(outside)
    with pytest.raises(TenantFileError):
        prepare(plan(volume, config=(config(volume, "conf/openclaw.json"),)))
    with pytest.raises(TenantFileError):
        prepare(plan(volume, secrets=(SecretFile(volume, "conf/key", "s3cret-value"),)))
    assert list(outside.iterdir()) == []


def test_a_secret_replaces_a_planted_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    volume, outside = tmp_path / "vol", tmp_path / "outside"
    volume.mkdir()
    outside.write_text("host file")
    (volume / "key").symlink_to(outside)
    prepare(plan(volume, secrets=(SecretFile(volume, "key", "s3cret-value"),)))
    assert outside.read_text() == "host file"
    assert not (volume / "key").is_symlink() and (volume / "key").read_text() == "s3cret-value"


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "openclaw.json")
    with pytest.raises(TenantFileError, match="not a regular file"):
        prepare(plan(tmp_path, config=(config(tmp_path),)))


def test_secret_file_mode_owner_and_replacement(tmp_path: Path) -> None:
    prepare(plan(tmp_path, secrets=(SecretFile(tmp_path, "secrets/env.json", "one"),)))
    prepare(plan(tmp_path, secrets=(SecretFile(tmp_path, "secrets/env.json", "two"),)))
    target = tmp_path / "secrets" / "env.json"
    info = target.stat()
    assert target.read_text() == "two"
    assert stat.S_IMODE(info.st_mode) == 0o600 and (info.st_uid, info.st_gid) == (1000, 1001)
    assert sorted(p.name for p in target.parent.iterdir()) == ["env.json"]  # no temp files left


def test_errors_never_carry_file_contents(tmp_path: Path) -> None:
    (tmp_path / "openclaw.json").write_text('["sk-live-customer-secret"]')
    with pytest.raises(TenantFileError) as caught:
        prepare(plan(tmp_path, config=(config(tmp_path),)))
    assert "sk-live" not in str(caught.value)
