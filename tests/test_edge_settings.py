"""The edge's settings: EDGE_FIREWALL's resolution, break-glass SSH's key and blocks."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from control.settings import Settings, SettingsError
from control.settings.edge import ssh_public_key
from tests.fixtures import ADMIN_TOKEN, INTERNAL_SECRET


def openssh(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


ED25519 = openssh(ed25519.Ed25519PrivateKey.generate())
ECDSA = openssh(ec.generate_private_key(ec.SECP256R1()))
RSA_3072 = openssh(rsa.generate_private_key(public_exponent=65537, key_size=3072))
RSA_2048 = openssh(rsa.generate_private_key(public_exponent=65537, key_size=2048))

HETZNER = {
    "PROVIDER": "hetzner",
    "HETZNER_API_TOKEN": "t" * 64,
    "PUBLIC_URL": "https://control.example.com",
}
CLOUDFLARE = {
    "DNS_PROVIDER": "cloudflare",
    "CLOUDFLARE_API_TOKEN": "c" * 40,
    "CLOUDFLARE_ZONE_ID": "z" * 32,
    "BASE_DOMAIN": "example.com",
}


def settings(**env: str) -> Settings:
    return Settings.from_env(
        {"ADMIN_TOKEN": ADMIN_TOKEN, "INTERNAL_SECRET": INTERNAL_SECRET, **env}
    )


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        (HETZNER, False),
        (HETZNER | CLOUDFLARE, True),
        (HETZNER | CLOUDFLARE | {"EDGE_FIREWALL": "false"}, False),
        (HETZNER | CLOUDFLARE | {"EDGE_FIREWALL": "true"}, True),
        (CLOUDFLARE, False),
    ],
    ids=["local", "hetzner-no-dns", "production", "turned-off", "explicit", "local-cloudflare"],
)
def test_the_firewall_is_on_by_default_in_production_only(env: dict[str, str], on: bool) -> None:
    s = settings(**env)
    assert s.firewall_on(s.provider, s.dns_provider) is on


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"EDGE_FIREWALL": "true"}, "EDGE_FIREWALL: true needs PROVIDER=hetzner"),
        (HETZNER | {"EDGE_FIREWALL": "true"}, "EDGE_FIREWALL: true needs DNS_PROVIDER=cloudflare"),
        (
            HETZNER | CLOUDFLARE | {"BREAK_GLASS_SSH_KEY": ED25519},
            "BREAK_GLASS_SSH_CIDRS: required",
        ),
        ({"BREAK_GLASS_SSH_CIDRS": "203.0.113.7/32"}, "only with BREAK_GLASS_SSH_KEY"),
        (
            {"BREAK_GLASS_SSH_KEY": ED25519, "BREAK_GLASS_SSH_CIDRS": "203.0.113.7"},
            "not a CIDR block",
        ),
        (
            {"BREAK_GLASS_SSH_KEY": ED25519, "BREAK_GLASS_SSH_CIDRS": "203.0.113.7/24"},
            "not a CIDR block",
        ),
        ({"BREAK_GLASS_SSH_KEY": RSA_2048}, "BREAK_GLASS_SSH_KEY: an RSA key needs at least 3072"),
        ({"BREAK_GLASS_SSH_KEY": "ssh-ed25519 AAAA"}, "BREAK_GLASS_SSH_KEY: not a readable"),
        ({"BREAK_GLASS_SSH_KEY": "hunter2"}, "BREAK_GLASS_SSH_KEY: one OpenSSH public key"),
        ({"BREAK_GLASS_SSH_KEY": ED25519 + "\nssh-rsa AAAA"}, "BREAK_GLASS_SSH_KEY"),
        ({"BREAK_GLASS_SSH_KEY": ED25519 + " it's-me"}, "comment"),
    ],
)
def test_refused(env: dict[str, str], problem: str) -> None:
    with pytest.raises(SettingsError, match=problem):
        settings(**env)


@pytest.mark.parametrize(
    "env",
    [
        HETZNER
        | CLOUDFLARE
        | {"BREAK_GLASS_SSH_KEY": ED25519, "BREAK_GLASS_SSH_CIDRS": "203.0.113.7/32"},
        HETZNER | {"BREAK_GLASS_SSH_KEY": ECDSA},  # no firewall: the operator's own rules apply
        {"BREAK_GLASS_SSH_KEY": RSA_3072 + " ops@laptop", "BREAK_GLASS_SSH_CIDRS": "2001:db8::/48"},
    ],
)
def test_accepted(env: dict[str, str]) -> None:
    s = settings(**env)
    assert s.break_glass_ssh_key == env["BREAK_GLASS_SSH_KEY"]


@pytest.mark.parametrize("key", [ED25519, ECDSA, RSA_3072], ids=["ed25519", "ecdsa", "rsa-3072"])
def test_real_keys_parse(key: str) -> None:
    assert ssh_public_key(f"  {key}  comment@host ".strip()) == f"{key} comment@host"
