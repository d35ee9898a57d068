"""Tenant profiles: strict parsing (errors name the file and key), specs built from
them (OpenClaw vs generic), and start-up refusing a plan below the profile's minimum."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from control.plans import DEFAULT_PLAN, Plan
from control.settings import Settings, SettingsError, profiles, rules
from control.workers.specs import UserPlacement, build_spec
from shared import signin
from shared.config import Invalid
from shared.protocol import to_builtins

GOOD = {"ADMIN_TOKEN": "a" * 32, "INTERNAL_SECRET": "b" * 32}
# No local router: the user URL is https://<subdomain>.<BASE_DOMAIN>.
OPENCLAW = Settings(admin_token="a" * 32, internal_secret="b" * 32, local_router_address="")
GENERIC = OPENCLAW.with_overrides(tenant_profile=profiles.load("generic"))
ALICE = UserPlacement("alice", "alice", DEFAULT_PLAN, {"OPENCLAW_GATEWAY_TOKEN": "tok"})
MINIMAL = 'min_memory_mb = 64\n[volumes]\nstate = "/data"\n'


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("volumes = {s = '/d'}\n", "min_memory_mb: required"),
        ("min_memory_mb = 64\n", "volumes: required"),
        ("colour = 1\n" + MINIMAL, "colour: unknown key"),
        ("min_memory_mb = '64'\n[volumes]\nstate = '/data'\n", "min_memory_mb: expected int"),
        ("min_memory_mb = 8\n[volumes]\nstate = '/data'\n", "min_memory_mb must be"),
        ("min_memory_mb = 64\nheap_fraction = 1.5\n[volumes]\ns = '/d'\n", "heap_fraction"),
        ("min_memory_mb = 64\n[volumes]\nstate = 'data'\n", "volumes.state"),
        ("command = []\n" + MINIMAL, "command: expected a non-empty list"),
        ("command = ['x', '{host}']\n" + MINIMAL, "unknown placeholder {host}"),
        (MINIMAL + "[env]\nNODE_OPTIONS = 'x'\n", "env.NODE_OPTIONS"),
        (MINIMAL + "[env]\nA = 1\n", "env.A"),
        (MINIMAL + "[health]\nstartup_seconds = -1\n", "health.startup_seconds"),
        (MINIMAL + "[health]\npath = 'healthz'\n", "health.path"),
        (MINIMAL + "[health]\nheaders = {'X A' = '1'}\n", "health.headers"),
        (MINIMAL + '[health]\nheaders = {X-A = "a\\nb"}\n', "health.headers"),
        (MINIMAL + "[health]\nheaders = {X-A = 1}\n", "health.headers"),
        (MINIMAL + "[config]\nvolume = 'other'\npath = 'c.json'\nowned = '{}'\n", "config.volume"),
        (MINIMAL + "[config]\nvolume = 'state'\npath = '../c'\nowned = '{}'\n", "config.path"),
        (
            MINIMAL + "[config]\nvolume = 'state'\npath = 'c'\nowned = '{x'\n",
            "config.owned: not JSON",
        ),
        (MINIMAL + "[config]\nvolume = 'state'\npath = 'c'\nowned = '[]'\n", "JSON object"),
        (MINIMAL + "[config]\nvolume='state'\npath='c'\nowned='{\"a\": \"{nope}\"}'\n", "{nope}"),
        (MINIMAL + "[config]\nvolume = 'state'\npath = 'c'\nowned = '{}'\nseed = '1'\n", "seed"),
        (MINIMAL + "[signin]\nenabled = true\n", "signin.identity_header: required"),
        (MINIMAL + "[signin]\nenabled = 'yes'\n", "signin.enabled: expected bool"),
        (MINIMAL + "[secrets]\nvolume = 'state'\npath = '.env'\nnames = ['A B']\n", "names"),
        (MINIMAL + "[secrets]\nvolume = 'state'\npath = '.env'\n", "secrets.names: required"),
        ("min_memory_mb = \n", "not readable TOML"),
    ],
)
def test_bad_profiles_name_the_file_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(text)
    with pytest.raises(Invalid) as info:
        profiles.load(str(path))
    assert str(info.value).startswith(f"{path}: ")
    assert fragment in str(info.value)


def test_an_operators_profile_and_the_shipped_ones_load(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text("command = ['srv', '--port', '{port}']\n" + MINIMAL)
    mine = profiles.load(str(path))
    assert (mine.name, mine.command, mine.volumes) == (
        "mine",
        ("srv", "--port", "{port}"),
        (("state", "/data"),),
    )
    assert profiles.load("openclaw").signin and not profiles.load("generic").signin
    with pytest.raises(Invalid, match="no profile 'nope' \\(shipped: generic, openclaw"):
        profiles.load("nope")


def test_tenant_profile_setting_and_plan_minimum() -> None:
    assert Settings.from_env(GOOD).tenant_profile.name == "openclaw"
    assert Settings.from_env({**GOOD, "TENANT_PROFILE": "generic"}).tenant_profile.name == "generic"
    small = '{"small": {"memory_mb": 1023, "cpus": 0.5, "pids": 100, "disk_gb": 1}}'
    with pytest.raises(SettingsError) as info:
        Settings.from_env({**GOOD, "PLANS": small})
    assert (
        str(info.value)
        == "PLANS: plan small has 1023 MB, below the 1024 MB TENANT_PROFILE openclaw needs"
    )
    assert "\n" not in str(info.value)
    Settings.from_env({**GOOD, "PLANS": small, "TENANT_PROFILE": "generic"})
    with pytest.raises(SettingsError, match=r"^TENANT_PROFILE: no profile"):
        Settings.from_env({**GOOD, "TENANT_PROFILE": "nope"})


def test_openclaw_spec() -> None:
    plan = Plan(name="big", memory_mb=2048, cpus=1, pids=512, disk_gb=5)
    user = UserPlacement("alice", "alice", plan, {"OPENCLAW_GATEWAY_TOKEN": "tok"}, {"A_KEY": "v"})
    spec = build_spec(user, OPENCLAW, "srv-abcd")
    assert spec.command == [
        "openclaw",
        "gateway",
        "--bind",
        "lan",
        "--port",
        "18789",
        "--allow-unconfigured",
    ]
    assert spec.env == {  # no gateway token: trusted-proxy mode refuses to start with one
        "OPENCLAW_DISABLE_BONJOUR": "1",
        "TINI_SUBREAPER": "1",
        "NODE_OPTIONS": "--max-old-space-size=1536",
    }
    assert (
        spec.signin_key == signin.signin_key("tok") and spec.identity_header == "X-Clawfleet-User"
    )
    (config,) = spec.config_files
    assert (config.volume, config.path, json.loads(config.seed)) == (
        "clawfleet-alice-state",
        "openclaw.json",
        {},
    )
    assert json.loads(config.owned) == {
        "gateway": {
            "mode": "local",
            "port": 18789,
            "bind": "lan",
            "auth": {
                "mode": "trusted-proxy",
                "token": None,  # deleted from the customer's file (RFC 7386)
                "password": None,
                "trustedProxy": {
                    "userHeader": "X-Clawfleet-User",
                    "deviceAutoApprove": {"enabled": True},
                },
            },
            "trustedProxies": ["{{network_gateway}}"],
            "controlUi": {
                "allowedOrigins": ["https://alice.clawfleet.localhost"],
                # The image's UI as a configured root: no 54 MB copy into the volume.
                "root": "/opt/openclaw/node_modules/openclaw/dist/control-ui",
            },
        }
    }
    (secret,) = spec.secret_files
    assert (secret.volume, secret.path, secret.content) == (
        "clawfleet-alice-state",
        ".env",
        "A_KEY=v\n",
    )
    assert "v\n" not in str(spec.env) + str(spec.labels)
    assert spec.health.start_seconds == 120  # the real gateway's allowance reaches the worker
    # The startup probe, with the client attribution the gateway wants from a proxy.
    assert (spec.health.path, spec.health.headers) == (
        "/startupz",
        {"X-Forwarded-For": "192.0.2.1"},
    )


def test_spec_hash_covers_secrets_token_and_plan_memory() -> None:
    base = build_spec(ALICE, OPENCLAW, "srv-abcd")
    changed = [
        UserPlacement("alice", "alice", DEFAULT_PLAN, ALICE.env, {"A": "1"}),
        UserPlacement("alice", "alice", DEFAULT_PLAN, {"OPENCLAW_GATEWAY_TOKEN": "other"}),
    ]
    hashes = {base.spec_hash} | {build_spec(u, OPENCLAW, "srv-abcd").spec_hash for u in changed}
    with_secret = UserPlacement("alice", "alice", DEFAULT_PLAN, ALICE.env, {"A": "2"})
    hashes.add(build_spec(with_secret, OPENCLAW, "srv-abcd").spec_hash)
    assert len(hashes) == 4
    assert build_spec(ALICE, OPENCLAW, "srv-abcd") == base  # stable


def test_generic_spec_is_the_image_as_it_is() -> None:
    spec = build_spec(ALICE, GENERIC, "srv-abcd")
    assert spec.command is None and spec.env == {"OPENCLAW_GATEWAY_TOKEN": "tok"}
    assert spec.config_files == [] and spec.secret_files == [] and spec.signin_key == ""
    assert spec.health.path == GENERIC.agent_health_path
    # No allowance stated: the worker's HEALTH_GATE applies, and the spec (so its hash)
    # is as it was before the field existed.
    assert spec.health.start_seconds == 0 and "start_seconds" not in to_builtins(spec.health)


@pytest.mark.parametrize(
    ("provider", "router", "loopback"),
    [
        ("local", "127.0.0.1:8000", True),
        ("local", "localhost:8000", True),
        ("local", "[::1]:8000", True),
        ("local", "127.1.2.3:80", True),
        ("local", "", False),  # no router
        ("local", "172.17.0.1:8000", False),  # browsers arrive with a real address
        ("local", "0.0.0.0:8000", False),
        ("hetzner", "127.0.0.1:8000", False),  # production never fakes a client
    ],
)
def test_loopback_router(provider: str, router: str, loopback: bool) -> None:
    settings = OPENCLAW.with_overrides(provider=provider, local_router_address=router)
    assert rules.loopback_router(settings) is loopback


def test_only_a_loopback_demo_trusts_loopback() -> None:
    """`make run`'s router on 127.0.0.1: the gateway also trusts 127.0.0.1 (Traefik
    appends it); anywhere else it trusts only the user's network gateway."""

    def proxies(settings: Settings) -> list[str]:
        (config,) = build_spec(ALICE, settings, "srv-abcd").config_files
        return list(json.loads(config.owned)["gateway"]["trustedProxies"])

    demo = OPENCLAW.with_overrides(provider="local", local_router_address="127.0.0.1:8000")
    assert proxies(demo) == ["{{network_gateway}}", "127.0.0.1"]
    assert proxies(OPENCLAW) == ["{{network_gateway}}"]
    assert proxies(demo.with_overrides(local_router_address="172.17.0.1:8000")) == [
        "{{network_gateway}}"
    ]
    (config,) = build_spec(ALICE, demo, "srv-abcd").config_files
    assert json.loads(config.owned)["gateway"]["auth"]["mode"] == "trusted-proxy"  # the rest kept


def test_loopback_owned_must_be_a_json_object(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        MINIMAL + '[config]\nvolume = "state"\npath = "c.json"\nowned = "{}"\n'
        "loopback_owned = '[1]'\n"
    )
    with pytest.raises(Invalid, match=r"config\.loopback_owned: expected a JSON object"):
        profiles.load(str(path))
