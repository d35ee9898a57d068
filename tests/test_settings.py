"""Settings from the environment, and `python -m control` start-up behaviour."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from control.settings import VARIABLES, Settings, SettingsError, reference_markdown
from control.settings.volumes import resolve_user_volumes
from tests.fixtures import free_port

GOOD = {"ADMIN_TOKEN": "a" * 32, "INTERNAL_SECRET": "s" * 32}


def test_defaults() -> None:
    s = Settings.from_env(GOOD)
    assert (s.listen_host, s.listen_port, s.provider) == ("127.0.0.1", 8080, "local")
    assert s.public_url == "http://127.0.0.1:8080"
    assert (s.agent_port, s.agent_health_path, s.agent_user) == (18789, "/healthz", "1000:1000")
    assert s.agent_image.startswith("ghcr.io/openclaw/openclaw:") and not s.agent_image.endswith(
        ":latest"
    )
    assert s.hetzner_server_types == ("cpx22",)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "ADMIN_TOKEN"),
        ({"ADMIN_TOKEN": "a" * 32}, "INTERNAL_SECRET"),
        ({**GOOD, "INTERNAL_SECRET": "short"}, "INTERNAL_SECRET"),
        ({**GOOD, "LISTEN_PORT": "99999"}, "LISTEN_PORT"),
        ({**GOOD, "LISTEN_PORT": "http"}, "LISTEN_PORT"),
        ({**GOOD, "PUBLIC_URL": "ftp://x"}, "PUBLIC_URL"),
        ({**GOOD, "PROVIDER": "aws"}, "PROVIDER"),
        (
            {**GOOD, "PROVIDER": "hetzner", "PUBLIC_URL": "https://cp.example.com"},
            "HETZNER_API_TOKEN",
        ),
        (
            {**GOOD, "PROVIDER": "hetzner", "HETZNER_API_TOKEN": "t"},
            "PUBLIC_URL",
        ),  # loopback default
        (
            {
                **GOOD,
                "PROVIDER": "hetzner",
                "HETZNER_API_TOKEN": "t",
                "PUBLIC_URL": "http://cp.example.com",
            },
            "PUBLIC_URL",
        ),
        ({**GOOD, "ACME_EMAIL": "not-an-email"}, "ACME_EMAIL"),
        ({**GOOD, "TRAEFIK_VERSION": "latest; rm"}, "TRAEFIK_VERSION"),
        ({**GOOD, "AGENT_USER": "0:0"}, "AGENT_USER"),
        ({**GOOD, "AGENT_USER": "node"}, "AGENT_USER"),
        ({**GOOD, "AGENT_HEALTH_PATH": "healthz"}, "AGENT_HEALTH_PATH"),
        ({**GOOD, "HEARTBEAT_INTERVAL": "fast"}, "HEARTBEAT_INTERVAL"),
        ({**GOOD, "DEAD_AFTER": "20"}, "DEAD_AFTER"),
        ({**GOOD, "BASE_DOMAIN": "not a domain"}, "BASE_DOMAIN"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert str(info.value).startswith(variable + ":")


def test_errors_and_repr_never_show_secrets() -> None:
    secret = "super-secret-value-that-must-not-leak-0123"
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"ADMIN_TOKEN": secret[:10], "INTERNAL_SECRET": secret})
    assert secret[:10] not in str(info.value)
    s = Settings.from_env(
        {"ADMIN_TOKEN": secret, "INTERNAL_SECRET": secret, "HETZNER_API_TOKEN": secret}
    )
    assert secret not in repr(s)


def test_configuration_reference_matches_the_settings_code() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    assert doc == reference_markdown(), "docs/configuration.md is stale: run `make docs`"
    for var in VARIABLES:
        assert f"`{var.name}`" in doc


def test_env_example_has_every_variable_and_only_placeholders() -> None:
    text = (Path(__file__).parent.parent / ".env.example").read_text()
    names = {line.split("=")[0].lstrip("# ").strip() for line in text.splitlines() if "=" in line}
    assert {v.name for v in VARIABLES} <= names
    for line in text.splitlines():
        if line.startswith(("sk_live", "whsec_")) or "sk_live_" in line:
            pytest.fail(f"real-looking secret in .env.example: {line.split('=')[0]}")


def run_control(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if not k.endswith(("_TOKEN", "_SECRET"))}
    full.update(env)
    return subprocess.Popen(
        [sys.executable, "-m", "control", *args],
        cwd=tmp_path,
        env={**full, "PYTHONPATH": str(Path(__file__).parent.parent)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_missing_setting_stops_start_up_with_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = run_control(tmp_path, {})
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert err.strip().splitlines() == [
        "clawfleet: configuration error: ADMIN_TOKEN: required but not set"
    ]


def test_local_secrets_are_generated_once_with_mode_0600(tmp_path: Path) -> None:
    port = free_port()
    # No autoscaling: this test is about start-up, not about local workers.
    env = {
        "LISTEN_PORT": str(port),
        "LOG_LEVEL": "WARNING",
        "MAX_SERVERS": "0",
        "WARM_HEADROOM": "0",
    }
    outputs = []
    for _ in range(2):
        proc = run_control(tmp_path, env, "--local-secrets", "data")
        answered = False
        try:
            # Generous: CI once saw a loaded 2-core machine take over 30 s to start it.
            deadline = time.monotonic() + 120
            while not answered and time.monotonic() < deadline and proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                        answered = r.status == 200
                except OSError:
                    time.sleep(0.2)  # a subprocess we do not control: poll its port
        finally:
            proc.terminate()
            out, err = proc.communicate(timeout=30)
        assert answered, f"control plane did not answer /healthz (exit {proc.returncode}): {err}"
        outputs.append(out)
    data = tmp_path / "data"
    token = (data / "admin_token").read_text().strip()
    assert len(token) >= 32
    for name in ("admin_token", "internal_secret", "clawfleet.db"):
        assert (data / name).stat().st_mode & 0o777 == 0o600, name
    assert token in outputs[0]  # printed once, on first run
    assert token not in outputs[1]
    assert (data / "internal_secret").read_text().strip() not in outputs[0] + outputs[1]


@pytest.mark.parametrize(
    ("plans", "fragment"),
    [
        ("{", "not valid JSON"),
        ("[]", "expected an object"),
        ('{"Pro": {}}', "plan name"),
        ('{"pro": {"memory_mb": 1024, "cpus": 1, "pids": 100}}', "disk_gb"),
        (
            '{"pro": {"memory_mb": "1024", "cpus": 1, "pids": 100, "disk_gb": 5}}',
            "memory_mb must be an integer",
        ),
        (
            '{"pro": {"memory_mb": 1024, "cpus": true, "pids": 100, "disk_gb": 5}}',
            "cpus must be a number",
        ),
        ('{"pro": {"memory_mb": 10, "cpus": 1, "pids": 100, "disk_gb": 5}}', "between"),
        (
            '{"pro": {"memory_mb": 1024, "cpus": 1, "pids": 100, "disk_gb": 5, "gpu": 1}}',
            "unknown field",
        ),
        (
            '{"a": {"memory_mb": 1024, "cpus": 1, "pids": 100, "disk_gb": 5, "stripe_price_ids": ["p1"]},'
            ' "b": {"memory_mb": 1024, "cpus": 1, "pids": 100, "disk_gb": 5, "stripe_price_ids": ["p1"]}}',
            "in both",
        ),
    ],
)
def test_bad_plans_are_rejected_with_the_reason(plans: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({**GOOD, "PLANS": plans})
    assert str(info.value).startswith("PLANS:")
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("user_volumes", "disk_gb", "refused"),
    [("true", 10241, True), ("true", 10240, False), ("false", 10241, False)],
)
def test_a_plan_larger_than_one_volume_is_refused_with_user_volumes(
    user_volumes: str, disk_gb: int, refused: bool
) -> None:
    plans = f'{{"huge": {{"memory_mb": 1024, "cpus": 1, "pids": 100, "disk_gb": {disk_gb}}}}}'
    env = {**GOOD, "PLANS": plans, "USER_VOLUMES": user_volumes}
    if not refused:
        assert Settings.from_env(env).plans["huge"].disk_gb == disk_gb
        return
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert str(info.value) == (
        "PLANS: plan huge has disk_gb 10241, above the 10240 GB one volume holds (USER_VOLUMES)"
    )


def test_plans_extend_and_override_the_default() -> None:
    s = Settings.from_env(
        {
            **GOOD,
            "PLANS": '{"pro": {"memory_mb": 4096, "cpus": 2, "pids": 2048, "disk_gb": 40, "stripe_price_ids": ["price_1"]},'
            ' "default": {"memory_mb": 512, "cpus": 0.25, "pids": 256, "disk_gb": 2}}',
            # 512 MB is below OpenClaw's minimum (tests/test_profiles.py).
            "TENANT_PROFILE": "generic",
        }
    )
    assert set(s.plans) == {"default", "pro"}
    assert s.plans["pro"].stripe_price_ids == ("price_1",)
    assert s.plans["default"].memory_mb == 512
    assert Settings.from_env(GOOD).plans["default"].memory_mb == 1024


def test_each_variable_is_declared_once_and_the_rest_is_derived() -> None:
    """The Settings field, the variable and its documentation are one declaration: the
    field default is what an empty environment gives, and VARIABLES lists the fields."""
    from shared.config import variables

    declared = variables(Settings)
    assert declared == VARIABLES
    assert len({v.name for v in declared}) == len(declared) == len({v.field for v in declared})
    empty = Settings.from_env(GOOD)
    direct = Settings(admin_token=GOOD["ADMIN_TOKEN"], internal_secret=GOOD["INTERNAL_SECRET"])
    assert empty == direct
    hidden = [v.field for v in declared if v.secret]
    assert hidden and [f for f in hidden if f"{f}=" in repr(direct)] == []


def test_the_agents_variables_are_declared_once_and_documented() -> None:
    from agent.config import Settings as AgentSettings
    from agent.config import load_settings
    from shared.config import variables

    declared = variables(AgentSettings)
    doc = (Path(__file__).parent.parent / "docs" / "agent.md").read_text()
    assert [v.name for v in declared if f"`{v.name}`" not in doc] == []
    url = "https://cp.example.com"
    assert load_settings({"CONTROL_URL": url}) == AgentSettings(control_url=url)


@pytest.mark.parametrize(
    ("value", "provider", "on"),
    [
        ("auto", "hetzner", True),  # a dead server never costs a customer their state
        ("auto", "local", False),  # loop devices need root; a laptop's make run need not be
        ("true", "local", True),
        ("false", "hetzner", False),
    ],
)
def test_user_volumes_auto_follows_the_provider(value: str, provider: str, on: bool) -> None:
    assert resolve_user_volumes(value, provider) is on


def test_user_volumes_refuses_other_words() -> None:
    base = {"ADMIN_TOKEN": "a" * 32, "INTERNAL_SECRET": "b" * 32}
    assert Settings.from_env(base).user_volumes is False  # PROVIDER=local
    assert Settings.from_env({**base, "USER_VOLUMES": "true"}).user_volumes is True
    with pytest.raises(SettingsError, match="USER_VOLUMES"):
        Settings.from_env({**base, "USER_VOLUMES": "yes"})
