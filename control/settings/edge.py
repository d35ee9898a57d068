"""The edge's variables (docs/production.md, "The edge"), declared like every other setting.

Contract: `EdgeSettings` is a frozen, keyword-only dataclass that `Settings` inherits
(like VolumeSettings: the settings module has no room left under the 400-line rule).
- EDGE_FIREWALL is `auto`, `true` or `false`; `firewall_on(provider, dns_provider)`
  resolves it: auto is on exactly with PROVIDER=hetzner and DNS_PROVIDER=cloudflare (the
  firewall admits only Cloudflare, so without Cloudflare in front it would shut users
  out); `true` elsewhere is refused by `check_edge`.
- BREAK_GLASS_SSH_KEY is one OpenSSH public key (ed25519, ECDSA or RSA of at least 3072
  bits), parsed for real; empty: workers run no sshd at all. BREAK_GLASS_SSH_CIDRS are
  the blocks the firewall then opens port 22 to; `check_edge` requires at least one
  with the key while the firewall is on, and refuses blocks without the key.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from control.settings.rules import DAY, SettingsError
from shared.config import Invalid, choice, items, number, setting

MIN_RSA_BITS = 3072
_KEY_SHAPE = re.compile(r"(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)|ssh-rsa) [A-Za-z0-9+/]+={0,2}")
_COMMENT = re.compile(r"[A-Za-z0-9@._:+-]{0,100}")


def ssh_public_key(value: str) -> str:
    """One OpenSSH public key line, `<type> <base64> [comment]`, checked by parsing it."""
    parts = value.split()
    if len(parts) not in (2, 3) or not _KEY_SHAPE.fullmatch(" ".join(parts[:2])):
        raise Invalid("one OpenSSH public key: ssh-ed25519, ecdsa-sha2-nistp256/384/521 or ssh-rsa")
    if len(parts) == 3 and not _COMMENT.fullmatch(parts[2]):
        raise Invalid("the key's comment may hold only A-Z a-z 0-9 @ . _ : + -")
    try:
        key = load_ssh_public_key(" ".join(parts[:2]).encode())
    except (ValueError, TypeError) as exc:
        raise Invalid(f"not a readable OpenSSH public key ({exc})") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise Invalid(f"an RSA key needs at least {MIN_RSA_BITS} bits")
    if not isinstance(key, rsa.RSAPublicKey | ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise Invalid("unsupported key type")
    return " ".join(parts)


@dataclass(frozen=True, kw_only=True)
class EdgeSettings:
    edge_firewall: str = setting(
        "EDGE_FIREWALL",
        "auto",
        choice("auto", "true", "false"),
        "A Hetzner Cloud Firewall on every worker the autoscaler creates: HTTPS only from Cloudflare's published ranges (refreshed daily), nothing else inbound (docs/production.md, The edge). auto: on with PROVIDER=hetzner and DNS_PROVIDER=cloudflare. Servers joined by hand are not covered.",
    )
    firewall_reconcile_interval: float = setting(
        "FIREWALL_RECONCILE_INTERVAL",
        "300",
        number(30, DAY),
        "Seconds between firewall rounds: each repairs drift (rules edited by hand, the firewall detached or deleted) and records it as an event.",
    )
    break_glass_ssh_key: str = setting(
        "BREAK_GLASS_SSH_KEY",
        "",
        lambda value: ssh_public_key(value) if value else "",
        "One OpenSSH public key (ed25519, ECDSA, or RSA of 3072+ bits) for emergency SSH to new workers as root; empty (the default): workers run no sshd at all. Set only while you need it.",
    )
    break_glass_ssh_cidrs: tuple[str, ...] = setting(
        "BREAK_GLASS_SSH_CIDRS",
        "",
        items(at_least_one=False),
        "With BREAK_GLASS_SSH_KEY: comma-separated CIDR blocks the firewall opens port 22 to (e.g. 203.0.113.7/32); required then while the firewall is on.",
    )

    def firewall_on(self, provider: str, dns_provider: str) -> bool:
        if self.edge_firewall == "auto":
            return provider == "hetzner" and dns_provider == "cloudflare"
        return self.edge_firewall == "true"

    def check_edge(self, provider: str, dns_provider: str) -> None:
        """The rules between the edge's variables and the provider's."""
        if self.edge_firewall == "true" and provider != "hetzner":
            raise SettingsError("EDGE_FIREWALL: true needs PROVIDER=hetzner")
        if self.edge_firewall == "true" and dns_provider != "cloudflare":
            raise SettingsError(
                "EDGE_FIREWALL: true needs DNS_PROVIDER=cloudflare (it admits only Cloudflare)"
            )
        _check_cidrs(self.break_glass_ssh_cidrs)
        if self.break_glass_ssh_cidrs and not self.break_glass_ssh_key:
            raise SettingsError("BREAK_GLASS_SSH_CIDRS: only with BREAK_GLASS_SSH_KEY")
        firewall = self.firewall_on(provider, dns_provider)
        if self.break_glass_ssh_key and firewall and not self.break_glass_ssh_cidrs:
            raise SettingsError(
                "BREAK_GLASS_SSH_CIDRS: required with BREAK_GLASS_SSH_KEY while the "
                "firewall is on (port 22 opens only to these blocks)"
            )


def _check_cidrs(values: tuple[str, ...]) -> None:
    for value in values:
        try:
            if "/" not in value:
                raise ValueError(value)
            ipaddress.ip_network(value, strict=True)
        except ValueError:
            raise SettingsError(
                f"BREAK_GLASS_SSH_CIDRS: {value!r} is not a CIDR block with empty host bits"
            ) from None
