"""The pure decisions of origin TLS (issue 14), as tables: when the agent renews, which
CSRs the control plane signs, when origin TLS is on, the SSL-mode warning, and when the
origin-pull certificate counts as deployed."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from agent.origin_tls import (
    DAY,
    RENEW_BEFORE,
    CertInfo,
    make_csr,
    new_key,
    renewal_reason,
    startup_file,
)
from control.edge import tls_rules
from control.edge.origin_pull import deployed_status

NAMES = ("*.example.com",)
NOW = 1_000_000_000.0


def cert(days_left: float, life: float = 90, names: tuple[str, ...] = NAMES) -> CertInfo:
    end = NOW + days_left * DAY
    return CertInfo(end - life * DAY, end, frozenset(names))


@pytest.mark.parametrize(
    ("current", "hostnames", "reason"),
    [
        (None, NAMES, "no certificate"),
        (cert(60), NAMES, None),
        (cert(31), NAMES, None),
        (cert(30), NAMES, "expires soon"),  # 30 days before expiry: well ahead
        (cert(1), NAMES, "expires soon"),
        (cert(-1), NAMES, "expired"),
        (cert(60), ("*.other.com",), "other host names"),
        (cert(60, names=("*.example.com", "example.com")), NAMES, "other host names"),
        (cert(95, life=90), NAMES, "not valid yet"),  # the clock went back
        (cert(200, life=365), NAMES, None),
        (cert(120, life=365), NAMES, "expires soon"),  # a third of a long life
    ],
)
def test_renewal_reason(current: CertInfo | None, hostnames: tuple[str, ...], reason: str) -> None:
    assert renewal_reason(current, hostnames, NOW) == reason


def csr_pem(key: object, names: list[x509.GeneralName] | None) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "w")])
    )
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    csr = builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.PEM).decode()


P256 = ec.generate_private_key(ec.SECP256R1())
WILD = [x509.DNSName("*.example.com")]


@pytest.mark.parametrize(
    ("pem", "error"),
    [
        (make_csr(new_key(), list(NAMES)), None),
        (csr_pem(P256, WILD), None),
        (csr_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048), WILD), None),
        (csr_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024), WILD), "key"),  # noqa: S505 (the weak key refused)
        (csr_pem(ec.generate_private_key(ec.SECP384R1()), WILD), "key"),
        (csr_pem(P256, None), "exactly"),
        (csr_pem(P256, [x509.DNSName("*.evil.com")]), "exactly"),
        (csr_pem(P256, [*WILD, x509.DNSName("admin.example.org")]), "exactly"),
        (csr_pem(P256, [*WILD, x509.UniformResourceIdentifier("https://x")]), "exactly"),
        ("not a csr", "PEM"),
    ],
)
def test_check_csr(pem: str, error: str | None) -> None:
    if error is None:
        tls_rules.check_csr(pem, NAMES)
        return
    with pytest.raises(tls_rules.BadCsr, match=error) as caught:
        tls_rules.check_csr(pem, NAMES)
    assert caught.value.status == 400


def test_a_tampered_csr_is_refused() -> None:
    pem = csr_pem(P256, WILD)
    der = bytearray(x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 1  # the signature's last byte
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(tls_rules.BadCsr, match="signature"):
        tls_rules.check_csr(tampered.decode(), NAMES)


@pytest.mark.parametrize(
    ("saved", "off", "routers_tls", "served"),
    [
        (False, False, True, "closed"),  # a new worker: refused until its certificate
        (True, False, True, "saved"),
        (True, True, True, "saved"),
        (False, True, True, "none"),  # the control plane said origin TLS is off
        (False, False, False, "none"),  # plain HTTP routers (the local demo)
        (True, False, False, "saved"),
    ],
)
def test_startup_file(saved: bool, off: bool, routers_tls: bool, served: str) -> None:
    assert startup_file(saved=saved, off=off, routers_tls=routers_tls) == served


@pytest.mark.parametrize(
    ("provider", "dns", "on"),
    [
        ("hetzner", "cloudflare", True),
        ("hetzner", "none", False),
        ("local", "cloudflare", False),  # the demo keeps plain HTTP on 127.0.0.1
        ("local", "none", False),
    ],
)
def test_enabled(provider: str, dns: str, on: bool) -> None:
    assert tls_rules.enabled(provider, dns) is on


@pytest.mark.parametrize(
    ("mode", "named"),
    [
        ("strict", None),
        ("full", "'full'"),
        ("flexible", "'flexible'"),
        ("off", "'off'"),
        (None, "unknown"),
    ],
)
def test_ssl_mode_warning(mode: str | None, named: str | None) -> None:
    warning = tls_rules.ssl_mode_warning(mode)
    if named is None:
        assert warning is None
    else:
        assert warning is not None and f"is {named}" in warning and "Full (strict)" in warning


@pytest.mark.parametrize(
    ("base", "names"),
    [("example.com", ("*.example.com",)), ("Example.COM.", ("*.example.com",))],
)
def test_allowed_hostnames(base: str, names: tuple[str, ...]) -> None:
    assert tls_rules.allowed_hostnames(base) == names


PULL = "-----BEGIN CERTIFICATE-----\nours\n-----END CERTIFICATE-----\n"
OTHER = "-----BEGIN CERTIFICATE-----\nsomeone else's\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize(
    ("listed", "status"),
    [
        ([], None),
        ([(OTHER, "active")], None),  # another certificate active: ours is not there
        ([(PULL, "pending_deployment")], "pending_deployment"),
        ([(PULL.strip(), "active")], "active"),  # the API may trim the PEM
        ([(PULL, "pending_deployment"), (PULL, "active")], "active"),  # uploaded twice
        ([(PULL, "pending_deletion"), (OTHER, "active")], "pending_deletion"),
    ],
)
def test_the_pull_certificate_is_ready_only_once_cloudflare_lists_it_active(
    listed: list[tuple[str, str]], status: str | None
) -> None:
    assert deployed_status(listed, PULL) == status


@pytest.mark.parametrize(
    ("on", "days_left", "state"),
    [
        (False, None, "off"),
        (False, 5.0, "off"),  # a certificate left from before: origin TLS is off now
        (True, None, "missing"),
        (True, 0.0, "expired"),
        (True, -1.0, "expired"),
        (True, 10.0, "renew_due"),
        (True, 30.0, "renew_due"),  # the agent's window opens 30 days before expiry
        (True, 30.01, "ok"),
        (True, 89.0, "ok"),
    ],
)
def test_how_a_reported_certificate_stands(on: bool, days_left: float | None, state: str) -> None:
    expires = None if days_left is None else NOW + days_left * DAY
    assert tls_rules.cert_state(on, expires, NOW) == state


def test_the_dashboard_warns_exactly_when_the_agent_renews() -> None:
    """The control plane's window is the agent's for the certificates it asks for."""
    life = tls_rules.VALIDITY_DAYS * DAY
    assert tls_rules.RENEW_WITHIN == max(RENEW_BEFORE, life / 3)
