"""Pure rules of origin TLS (issue 14): which names a worker's certificate may cover,
whether a worker's CSR may be signed, whether origin TLS is on, what the zone's SSL
mode means, and how a worker's reported certificate stands (`cert_state`).

Contract: nothing here does I/O. `check_csr` raises `BadCsr` (a 400 the agent sees)
naming what is wrong; it never trusts the CSR's names: they must equal, as a set, the
names the control plane allows (`allowed_hostnames`), and the key must be ECDSA P-256
or RSA of at least 2048 bits, with a valid self-signature.
"""

from __future__ import annotations

from typing import Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from control.errors import BadRequest

VALIDITY_DAYS: Final = 90  # one of Origin CA's allowed validities; agents renew with 30 left
RENEW_WITHIN: Final = VALIDITY_DAYS / 3 * 86400.0  # the agent's window (agent/origin_tls.py)
STRICT = "strict"
CertState = Literal["off", "missing", "expired", "renew_due", "ok"]


class BadCsr(BadRequest):
    code = "bad_csr"


def enabled(provider: str, dns_provider: str) -> bool:
    """Origin TLS is on for real servers behind Cloudflare; the local provider keeps
    plain HTTP on 127.0.0.1, and without Cloudflare DNS nothing can sign."""
    return provider != "local" and dns_provider == "cloudflare"


def cert_state(on: bool, expires: float | None, now: float) -> CertState:
    """What the dashboard says of a reporting worker's origin certificate (`expires`, its
    heartbeat's Unix seconds): "renew_due" once inside the agent's renewal window, which
    it leaves within hours when all is well, so one that stays there is failing."""
    if not on:
        return "off"
    if expires is None:
        return "missing"
    if expires <= now:
        return "expired"
    return "renew_due" if expires - now <= RENEW_WITHIN else "ok"


def allowed_hostnames(base_domain: str) -> tuple[str, ...]:
    """Every user's host is one label under BASE_DOMAIN: one wildcard covers them all."""
    return (f"*.{base_domain.strip().rstrip('.').lower()}",)


def ssl_mode_warning(mode: str | None) -> str | None:
    """The start-up warning for the zone's SSL mode, or None when it is Full (strict)."""
    if mode == STRICT:
        return None
    shown = "unknown" if mode is None else repr(mode)
    return (
        f"Cloudflare SSL mode of the zone is {shown}, not 'strict': set SSL/TLS to "
        "Full (strict) so Cloudflare verifies each worker's origin certificate "
        "(docs/production.md, The edge)"
    )


def _key_ok(key: object) -> bool:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return isinstance(key.curve, ec.SECP256R1)
    return isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048


def check_csr(pem: str, allowed: tuple[str, ...]) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
    except ValueError:
        raise BadCsr("csr: not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise BadCsr("csr: its signature does not verify")
    if not _key_ok(csr.public_key()):
        raise BadCsr("csr: the key must be ECDSA P-256 or RSA of at least 2048 bits")
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise BadCsr(f"csr: it must ask for exactly {list(allowed)}") from None
    names = san.get_values_for_type(x509.DNSName)
    if len(names) != len(list(san)) or sorted(set(names)) != sorted(allowed):
        raise BadCsr(f"csr: it must ask for exactly {list(allowed)}, not {names}")
    return csr
