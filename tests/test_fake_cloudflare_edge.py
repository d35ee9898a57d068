"""The edge endpoints of the fake Cloudflare API (tests/fakes/cloudflare_edge.py), driven
by the real `cloudflare` SDK: IP ranges, Origin CA signing checked with real X.509 path
validation, the zone's SSL mode, and zone-level authenticated origin pulls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cloudflare import (
    AsyncCloudflare,
    BadRequestError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
)
from cloudflare.types.zones import setting_edit_response, setting_get_response
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from tests.fakes import cloudflare_edge as edge
from tests.fakes.cloudflare import CloudflareFake, cloudflare_fake_fixture  # noqa: F401

PEM = serialization.Encoding.PEM
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


@pytest.fixture
async def client(cloudflare_fake: CloudflareFake) -> AsyncIterator[AsyncCloudflare]:
    sdk = AsyncCloudflare(api_token=cloudflare_fake.token, base_url=cloudflare_fake.url)
    sdk = sdk.with_options(max_retries=0)
    yield sdk
    await sdk.close()


def key_and_csr(kind: str, cn: str = "worker-1") -> tuple[Any, str]:
    key: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(PEM).decode()


def client_pair() -> tuple[str, str]:
    """A deployment-owned client certificate (self-signed, P-256) and its key, as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clawfleet origin pull")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return cert.public_bytes(PEM).decode(), key_pem


def code_of(error: Any) -> int:
    return int(error.errors[0].code)


# -- IP ranges ----------------------------------------------------------------------------


async def test_ip_ranges_are_cloudflares_and_need_no_credentials(
    cloudflare_fake: CloudflareFake,
) -> None:
    anonymous = AsyncCloudflare(api_token="not-a-token", base_url=cloudflare_fake.url)
    try:
        ips = await anonymous.ips.list()
    finally:
        await anonymous.close()
    assert ips is not None
    assert ips.ipv4_cidrs is not None and "173.245.48.0/20" in ips.ipv4_cidrs
    assert ips.ipv6_cidrs is not None and "2606:4700::/32" in ips.ipv6_cidrs
    assert ips.etag == cloudflare_fake.edge.ips_etag


async def test_ip_ranges_set_by_the_test_change_the_etag(
    cloudflare_fake: CloudflareFake, client: AsyncCloudflare
) -> None:
    before = await client.ips.list()
    cloudflare_fake.edge.ipv4_cidrs = ["198.51.100.0/24"]
    cloudflare_fake.edge.ipv6_cidrs = ["2001:db8::/32"]
    after = await client.ips.list()
    assert before is not None and after is not None
    assert (after.ipv4_cidrs, after.ipv6_cidrs) == (["198.51.100.0/24"], ["2001:db8::/32"])
    assert after.etag != before.etag


async def test_ip_ranges_fault_injection(
    cloudflare_fake: CloudflareFake, client: AsyncCloudflare
) -> None:
    cloudflare_fake.inject("GET /ips", 500, 10000, "Internal error")
    with pytest.raises(InternalServerError) as info:
        await client.ips.list()
    assert info.value.status_code == 500 and code_of(info.value) == 10000
    assert (await client.ips.list()) is not None  # one fault, then healthy
    assert cloudflare_fake.count("GET /ips") == 2


# -- Origin CA ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_type", "key_kind", "days"),
    [("origin-ecc", "ec", 90), ("origin-rsa", "rsa", 7), ("origin-ecc", "rsa", 5475)],
)
async def test_origin_ca_signs_the_csr_for_the_hostnames_and_validity(
    cloudflare_fake: CloudflareFake,
    client: AsyncCloudflare,
    request_type: Any,
    key_kind: str,
    days: Any,
) -> None:
    key, csr = key_and_csr(key_kind)
    hostnames = ["*.u.example.com", "u.example.com"]
    made = await client.origin_ca_certificates.create(
        csr=csr, hostnames=hostnames, request_type=request_type, requested_validity=days
    )
    assert made is not None and made.certificate is not None and made.id is not None
    cert = x509.load_pem_x509_certificate(made.certificate.encode())

    # It chains to the test's CA for this request type, for a tenant's hostname.
    root = cloudflare_fake.edge.ca(request_type).cert
    verifier = (
        PolicyBuilder()
        .store(Store([root]))
        .time(datetime.now(UTC) + timedelta(minutes=1))
        .build_server_verifier(x509.DNSName("alice.u.example.com"))
    )
    assert verifier.verify(cert, [])[-1] == root
    with pytest.raises(VerificationError):
        verifier_for_other = (
            PolicyBuilder()
            .store(Store([root]))
            .time(datetime.now(UTC) + timedelta(minutes=1))
            .build_server_verifier(x509.DNSName("alice.other.example.org"))
        )
        verifier_for_other.verify(cert, [])

    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == hostnames
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=days)
    assert made.expires_on == cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S +0000 UTC")
    assert made.id == str(cert.serial_number)
    pub = key.public_key().public_bytes(PEM, SPKI)
    assert cert.public_key().public_bytes(PEM, SPKI) == pub  # the worker's key, unchanged


async def test_origin_ca_certificate_get_list_and_revoke(
    cloudflare_fake: CloudflareFake, client: AsyncCloudflare
) -> None:
    _, csr = key_and_csr("ec")
    made = await client.origin_ca_certificates.create(
        csr=csr, hostnames=["*.u.example.com"], request_type="origin-ecc"
    )
    assert made is not None and made.id is not None
    assert made.requested_validity == 5475  # the documented default
    got = await client.origin_ca_certificates.get(made.id)
    assert got is not None and got.certificate == made.certificate
    listed = [
        c.id async for c in client.origin_ca_certificates.list(zone_id=cloudflare_fake.zone_id)
    ]
    assert listed == [made.id]

    revoked = await client.origin_ca_certificates.delete(made.id)
    assert revoked is not None and revoked.id == made.id and revoked.revoked_at is not None
    listed = [
        c.id async for c in client.origin_ca_certificates.list(zone_id=cloudflare_fake.zone_id)
    ]
    assert listed == []
    with pytest.raises(NotFoundError) as info:
        await client.origin_ca_certificates.get("12345")
    assert code_of(info.value) == edge.CERT_NOT_FOUND


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"csr": "-----BEGIN CERTIFICATE REQUEST-----\nnot a csr\n"}, edge.BAD_CSR),
        ({"hostnames": ["alice.example.org"]}, edge.HOSTNAME_NOT_IN_ZONE),
        ({"hostnames": ["*.*.u.example.com"]}, edge.BAD_REQUEST),
        ({"hostnames": ["*.com"]}, edge.BAD_REQUEST),
        ({"hostnames": []}, edge.BAD_REQUEST),
        ({"requested_validity": 400}, edge.BAD_REQUEST),
        ({"request_type": "keyless-certificate"}, edge.BAD_REQUEST),
    ],
)
async def test_origin_ca_refuses_bad_requests(
    cloudflare_fake: CloudflareFake, client: AsyncCloudflare, change: dict[str, Any], code: int
) -> None:
    _, csr = key_and_csr("ec")
    body: dict[str, Any] = {
        "csr": csr,
        "hostnames": ["*.u.example.com"],
        "request_type": "origin-ecc",
        "requested_validity": 90,
    }
    body.update(change)
    with pytest.raises(BadRequestError) as info:
        await client.origin_ca_certificates.create(**body)
    assert code_of(info.value) == code
    assert cloudflare_fake.edge.certificates == {}


async def test_origin_ca_refuses_a_csr_with_a_broken_signature(
    client: AsyncCloudflare,
) -> None:
    key, _ = key_and_csr("ec")
    good = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "w")]))
        .sign(key, hashes.SHA256())
    )
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF  # corrupt the signature bytes
    broken = x509.load_der_x509_csr(bytes(der)).public_bytes(PEM).decode()  # still parses
    with pytest.raises(BadRequestError) as info:
        await client.origin_ca_certificates.create(
            csr=broken, hostnames=["u.example.com"], request_type="origin-ecc"
        )
    assert code_of(info.value) == edge.BAD_CSR
    assert "signature" in info.value.errors[0].message


async def test_origin_ca_needs_ssl_edit_or_the_origin_ca_key(
    cloudflare_fake: CloudflareFake, client: AsyncCloudflare
) -> None:
    _, csr = key_and_csr("ec")
    kwargs: dict[str, Any] = {
        "csr": csr,
        "hostnames": ["u.example.com"],
        "request_type": "origin-ecc",
    }
    cloudflare_fake.scopes = {"zone:read", "dns:edit", "ssl:read"}
    with pytest.raises(PermissionDeniedError) as info:
        await client.origin_ca_certificates.create(**kwargs)
    assert info.value.status_code == 403 and code_of(info.value) == 10000

    legacy = AsyncCloudflare(
        user_service_key=cloudflare_fake.edge.origin_ca_key,
        base_url=cloudflare_fake.url,
        max_retries=0,
    )
    try:
        made = await legacy.origin_ca_certificates.create(**kwargs)
        assert made is not None and made.certificate is not None
        # The Origin CA key opens /certificates only.
        with pytest.raises(PermissionDeniedError):
            await legacy.zones.settings.get(setting_id="ssl", zone_id=cloudflare_fake.zone_id)
    finally:
        await legacy.close()


async def test_origin_ca_list_without_zone_id_is_code_1012(
    cloudflare_fake: CloudflareFake,
) -> None:
    headers = {"Authorization": f"Bearer {cloudflare_fake.token}"}
    async with httpx.AsyncClient() as http:
        answer = await http.get(cloudflare_fake.url + "/certificates", headers=headers)
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["code"] == edge.NO_ZONE_ID
    assert answer.json()["success"] is False


# -- SSL mode -----------------------------------------------------------------------------


async def test_ssl_mode_read_and_patch(
    cloudflare_fake: CloudflareFake, client: AsyncCloudflare
) -> None:
    zone = cloudflare_fake.zone_id
    # The SDK parses each answer into its SSL setting model: the shape is the real one.
    before = await client.zones.settings.get(setting_id="ssl", zone_id=zone)
    assert isinstance(before, setting_get_response.ZonesSSL2) and before.value == "full"
    after = await client.zones.settings.edit(setting_id="ssl", zone_id=zone, value="strict")
    assert isinstance(after, setting_edit_response.ZonesSSL2) and after.value == "strict"
    assert after.modified_on is not None
    again = await client.zones.settings.get(setting_id="ssl", zone_id=zone)
    assert isinstance(again, setting_get_response.ZonesSSL2) and again.value == "strict"
    assert cloudflare_fake.edge.ssl_mode == "strict"


async def test_ssl_mode_refuses_an_unknown_value_and_a_read_only_token(
    cloudflare_fake: CloudflareFake, client: AsyncCloudflare
) -> None:
    zone = cloudflare_fake.zone_id
    with pytest.raises(BadRequestError) as info:
        await client.zones.settings.edit(setting_id="ssl", zone_id=zone, value="strictest")
    assert code_of(info.value) == 1007
    cloudflare_fake.scopes = {"zone:read", "zone_settings:read"}
    with pytest.raises(PermissionDeniedError):
        await client.zones.settings.edit(setting_id="ssl", zone_id=zone, value="strict")
    got = await client.zones.settings.get(setting_id="ssl", zone_id=zone)
    assert isinstance(got, setting_get_response.ZonesSSL2) and got.value == "full"
    cloudflare_fake.scopes = {"zone:read"}
    with pytest.raises(PermissionDeniedError):
        await client.zones.settings.get(setting_id="ssl", zone_id=zone)


# -- authenticated origin pulls -----------------------------------------------------------


async def test_zone_origin_pull_certificate_upload_enable_and_delete(
    cloudflare_fake: CloudflareFake, client: AsyncCloudflare
) -> None:
    zone = cloudflare_fake.zone_id
    aop = client.origin_tls_client_auth
    cert_pem, key_pem = client_pair()
    made = await aop.zone_certificates.create(
        zone_id=zone, certificate=cert_pem, private_key=key_pem
    )
    assert made is not None and made.id is not None
    assert made.certificate == cert_pem and made.status == "active"
    assert made.signature == "ECDSAWithSHA256" and made.issuer == "clawfleet origin pull"
    assert made.private_key is None  # kept by Cloudflare, never handed back
    assert made.expires_on is not None and made.expires_on > datetime.now(UTC)

    listed = [c.id async for c in aop.zone_certificates.list(zone_id=zone)]
    assert listed == [made.id]
    got = await aop.zone_certificates.get(made.id, zone_id=zone)
    assert got is not None and got.certificate == cert_pem

    assert cloudflare_fake.edge.aop_client_pair() is None  # uploaded, not yet in use
    off = await aop.settings.get(zone_id=zone)
    assert off is not None and off.enabled is False
    on = await aop.settings.update(zone_id=zone, enabled=True)
    assert on is not None and on.enabled is True
    again = await aop.settings.get(zone_id=zone)
    assert again is not None and again.enabled is True
    assert cloudflare_fake.edge.aop_client_pair() == (cert_pem, key_pem)

    gone = await aop.zone_certificates.delete(made.id, zone_id=zone)
    assert gone is not None and gone.status == "pending_deletion"
    assert [c.id async for c in aop.zone_certificates.list(zone_id=zone)] == []
    with pytest.raises(NotFoundError):
        await aop.zone_certificates.get(made.id, zone_id=zone)


async def test_zone_origin_pull_refuses_a_mismatched_key_or_a_bad_certificate(
    cloudflare_fake: CloudflareFake, client: AsyncCloudflare
) -> None:
    zone = cloudflare_fake.zone_id
    aop = client.origin_tls_client_auth.zone_certificates
    cert_pem, _ = client_pair()
    _, other_key = client_pair()
    with pytest.raises(BadRequestError) as info:
        await aop.create(zone_id=zone, certificate=cert_pem, private_key=other_key)
    assert code_of(info.value) == edge.KEY_MISMATCH
    with pytest.raises(BadRequestError) as info:
        await aop.create(zone_id=zone, certificate="garbage", private_key=other_key)
    assert code_of(info.value) == edge.BAD_CLIENT_CERT
    with pytest.raises(BadRequestError):
        await client.origin_tls_client_auth.settings.update(zone_id=zone, enabled="yes")  # type: ignore[arg-type]
    assert cloudflare_fake.edge.aop_certs == {}


async def test_zone_origin_pull_needs_ssl_edit_and_a_known_zone(
    cloudflare_fake: CloudflareFake, client: AsyncCloudflare
) -> None:
    cert_pem, key_pem = client_pair()
    cloudflare_fake.scopes = {"zone:read", "ssl:read"}
    with pytest.raises(PermissionDeniedError):
        await client.origin_tls_client_auth.zone_certificates.create(
            zone_id=cloudflare_fake.zone_id, certificate=cert_pem, private_key=key_pem
        )
    with pytest.raises(PermissionDeniedError):
        await client.origin_tls_client_auth.settings.update(
            zone_id=cloudflare_fake.zone_id, enabled=True
        )
    settings = await client.origin_tls_client_auth.settings.get(zone_id=cloudflare_fake.zone_id)
    assert settings is not None and settings.enabled is False
    with pytest.raises(NotFoundError) as info:
        await client.origin_tls_client_auth.settings.get(zone_id="0" * 32)
    assert code_of(info.value) == 7003
