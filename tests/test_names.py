"""Every validator of a name full-matches: a trailing newline or carriage return, a space,
a look-alike from another script, a NUL or an over-long value is refused wherever a
value becomes a file name, a DNS name, a Docker name or a Traefik rule.

One table of mutations of a good value, applied to every validator; each validator is
first shown to accept its good value, so a refusal below is about the mutation."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import traefik
from control import cli, settings
from control.capacity.providers.base import ProviderError
from control.capacity.providers.hetzner_catalog import check_labels, check_name
from control.dns import provider
from control.errors import BadRequest
from control.plans import PlanError, parse_plans
from control.settings import Settings, SettingsError
from control.users.names import validate_subdomain, validate_user_id
from shared import names
from tests.fixtures import ControlPlane

REFUSALS = (ValueError, BadRequest, PlanError, ProviderError, SettingsError)


def _refused(check: Callable[[str], object], value: str) -> bool:
    """True when `check` refuses `value` (raises one of REFUSALS or returns False/None)."""
    try:
        result = check(value)
    except REFUSALS:
        return True
    return result is False or result is None


def _raises(check: Callable[[str], object]) -> Callable[[str], bool]:
    """For a validator that only raises: True when it returns at all."""

    def ok(value: str) -> bool:
        check(value)
        return True

    return ok


def _plan(name: str) -> object:
    body = {"memory_mb": 512, "cpus": 0.5, "pids": 128, "disk_gb": 1}
    return parse_plans(json.dumps({name: body}))


def _setting(name: str) -> Callable[[str], object]:
    base = {"ADMIN_TOKEN": "a" * 32, "INTERNAL_SECRET": "b" * 32}
    return lambda value: Settings.from_env({**base, name: value})


def _route(tmp: Path) -> Callable[[str], object]:
    return lambda user: traefik.route_file(tmp, "srv-w1", user)


def _host(host: str) -> object:
    return traefik.render("srv-w1", "u1", host, 1, traefik.RouteOptions())


# (name, good value, check). Settings are read stripped of surrounding whitespace
# (an env file's line end is not part of the value), so they get inner mutations only.
VALIDATORS: list[tuple[str, str, Callable[[str], object], bool]] = [
    ("users.user_id", "vic2", validate_user_id, True),
    ("users.subdomain", "vic2", validate_subdomain, True),
    ("plans.name", "pro", _plan, True),
    ("provider.fqdn", "vic2", lambda v: provider.fqdn(v, "example.com"), True),
    # The base domain comes from BASE_DOMAIN, already checked (below) and stripped.
    ("provider.fqdn base", "example.com", lambda v: provider.fqdn("vic2", v), False),
    ("hetzner.label", "prod", _raises(lambda v: check_labels({"clawfleet-cluster": v})), True),
    ("hetzner.label key", "cluster", _raises(lambda v: check_labels({v: "x"})), True),
    ("hetzner.name", "clawfleet-prod-1", _raises(check_name), True),
    ("cli.plan", "pro", cli._PLAN_NAME.fullmatch, True),
    ("traefik.route host", "vic2.example.com", _host, True),
    ("names.user_id", "vic2", names.user_id_ok, True),
    ("names.dns_label", "vic2", names.dns_label_ok, True),
    ("names.dns_name", "vic2.example.com", names.dns_name_ok, True),
    ("names.docker_name", "clawfleet-vic2", names.docker_name_ok, True),
    ("names.image", "ghcr.io/openclaw/openclaw:2026.11.20", names.image_ref_ok, True),
    ("names.label", "clawfleet.plan", lambda v: names.label_ok(v, "x"), True),
    ("names.abs_path", "/home/node", names.abs_path_ok, True),
    ("names.url_path", "/healthz", names.url_path_ok, True),
    ("names.env_name", "OPENCLAW_GATEWAY_TOKEN", names.env_name_ok, True),
    ("names.email", "ops@example.com", names.email_ok, True),
    ("CLUSTER_NAME", "prod", _setting("CLUSTER_NAME"), False),
    ("BASE_DOMAIN", "example.com", _setting("BASE_DOMAIN"), False),
    ("AGENT_IMAGE", "ghcr.io/openclaw/openclaw:1", _setting("AGENT_IMAGE"), False),
    ("AGENT_HEALTH_PATH", "/healthz", _setting("AGENT_HEALTH_PATH"), False),
    ("TRAEFIK_VERSION", "3.7.15", _setting("TRAEFIK_VERSION"), False),
    ("ACME_EMAIL", "ops@example.com", _setting("ACME_EMAIL"), False),
]


def mutations(good: str, edges: bool) -> list[tuple[str, str]]:
    inner = [
        ("inner space", f"{good[:2]} {good[2:]}"),
        ("inner newline", f"{good[:2]}\n{good[2:]}"),
        ("inner NUL", f"{good[:2]}\0{good[2:]}"),
        # A Cyrillic small o (U+043E) for an ASCII letter or digit, and other digits.
        ("cyrillic o", good[:-1] + "\u043e"),
        ("fullwidth 2", good[:-1] + "\uff12"),
        ("arabic-indic digit", good[:-1] + "\u0662"),
        ("over-long", good + "a" * 300),
    ]
    if not edges:
        return inner
    return [
        ("trailing newline", good + "\n"),
        ("trailing CR", good + "\r"),
        ("trailing CRLF", good + "\r\n"),
        ("leading newline", "\n" + good),
        ("trailing space", good + " "),
        ("trailing tab", good + "\t"),
        ("trailing NUL", good + "\0"),
        ("trailing U+2028", good + "\u2028"),
        ("empty", ""),
        *inner,
    ]


# Hetzner allows an empty label value; the cluster label is never empty (CLUSTER_NAME).
ALLOWED = {("hetzner.label", "empty")}
CASES = [
    pytest.param(check, value, id=f"{name}: {what}")
    for name, good, check, edges in VALIDATORS
    for what, value in mutations(good, edges)
    if (name, what) not in ALLOWED
]


@pytest.mark.parametrize(
    ("check", "good"),
    [pytest.param(check, good, id=name) for name, good, check, _ in VALIDATORS],
)
def test_each_validator_accepts_its_good_value(check: Callable[[str], object], good: str) -> None:
    assert not _refused(check, good)


@pytest.mark.parametrize(("check", "value"), CASES)
def test_each_validator_refuses_every_mutation(check: Callable[[str], object], value: str) -> None:
    assert _refused(check, value)


def test_route_file_names_refuse_paths_and_mutations(tmp_path: Path) -> None:
    check = _route(tmp_path)
    assert not _refused(check, "vic2")
    for _, value in mutations("vic2", True):
        assert _refused(check, value)
    for value in ("../vic2", "vic2/x", "vic2@srv-w2", "."):
        assert _refused(check, value)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("1000:1000", True),
        ("65534:65534", True),
        ("2147483647:1", True),
        ("0:0", False),
        ("00:00", False),
        ("00", False),
        ("0", False),
        ("1000", False),  # a uid alone can run with gid 0
        ("1000:0", False),
        ("1000:000", False),
        ("0:1000", False),
        ("01000:1000", False),
        ("2147483648:1000", False),
        ("99999999999:1000", False),
        ("-1:1000", False),
        ("+1000:1000", False),
        ("1000:1000:1000", False),
        ("root", False),
        ("node", False),
        ("1_000:1000", False),
        ("\u0661\u0660\u0660\u0660:1000", False),
        ("1000:1000\n", False),
    ],
)
def test_container_user_is_numbers_never_root(value: str, ok: bool) -> None:
    assert _refused(names.parse_container_user, value) is not ok


@pytest.mark.parametrize("value", ["00", "00:00", "0:1000", "1000:0", "1000", "node", "1e3:1"])
def test_agent_user_setting_refuses_root_however_written(value: str) -> None:
    with pytest.raises(SettingsError, match="AGENT_USER"):
        _setting("AGENT_USER")(value)


def test_agent_user_setting_accepts_numbers() -> None:
    assert _setting("AGENT_USER")("1000:1000").agent_user == "1000:1000"  # type: ignore[attr-defined]


def test_domain_pattern_lookahead_is_whole_value() -> None:
    assert settings.rules.DOMAIN.fullmatch("a" * 63 + "." + "b" * 63)
    assert not settings.rules.DOMAIN.fullmatch("example.com\n")


@pytest.mark.parametrize("subdomain", ["vic2\n", "vic2\r", "vic2 ", "v\u0456c2", "VIC2"])
async def test_api_refuses_a_look_alike_of_an_existing_subdomain(
    control: ControlPlane, subdomain: str
) -> None:
    status, _ = await control.admin("POST", "/v1/users", {"user_id": "vic", "subdomain": "vic2"})
    assert status == 201
    status, reply = await control.admin(
        "POST", "/v1/users", {"user_id": "mallory", "subdomain": subdomain}
    )
    assert status == 400, reply
    assert "subdomain" in reply["error"]["message"]
    _, listing = await control.admin("GET", "/v1/users")
    assert [u["user_id"] for u in listing["users"]] == ["vic"]


async def test_api_refuses_a_user_id_with_a_trailing_newline(control: ControlPlane) -> None:
    status, reply = await control.admin(
        "POST", "/v1/users", {"user_id": "vic\n", "subdomain": "other"}
    )
    assert status == 400, reply
    assert "user_id" in reply["error"]["message"]
