"""The edge half of the fake Cloudflare API: what a sealed worker needs besides DNS.

It is served by `CloudflareFake` (tests/fakes/cloudflare.py), whose middleware gives it the
same envelope, outage, rate limit, fault injection (`fake.inject("GET /ips", 500, 10000)`)
and call log as the DNS endpoints. This module holds the state (`fake.edge`) and answers:

- GET /ips: `{"ipv4_cidrs", "ipv6_cidrs", "etag"}`, Cloudflare's published ranges by default;
  set `edge.ipv4_cidrs` / `edge.ipv6_cidrs` to change them (the etag is a digest of both, so
  it changes with them). Like the real endpoint it needs no credentials.
- Origin CA: POST /certificates {csr, hostnames, request_type "origin-rsa"|"origin-ecc",
  requested_validity in {7, 30, 90, 365, 730, 1095, 5475}, default 5475}; GET
  /certificates?zone_id= (paged: page, per_page default 20); GET and DELETE (revoke)
  /certificates/{id}. A real CA per request type (`edge.ca("origin-rsa")`, an RSA root;
  `edge.ca("origin-ecc")`, a P-256 root; made on first use, or set one made by
  `make_origin_ca`) signs the CSR's public key for exactly the requested hostnames as DNS
  SANs, valid from now (to the minute) for the requested days. As on the real API, `id` is
  the certificate's decimal serial and `expires_on` is Go's time format,
  "2040-01-01 05:20:00 +0000 UTC", not ISO 8601. Revoked certificates leave the list.
- GET and PATCH /zones/{zone_id}/settings/ssl: `{"id": "ssl", "value", "editable",
  "modified_on"}`, value one of off/flexible/full/strict (`edge.ssl_mode`, default "full").
- Zone-level authenticated origin pulls: POST, GET /zones/{zone_id}/origin_tls_client_auth
  {certificate, private_key}, GET and DELETE .../origin_tls_client_auth/{id}, and GET and
  PUT .../origin_tls_client_auth/settings {enabled} (PUT, as the real API and the SDK's
  `settings.update`; there is no PATCH). An upload is `edge.aop_status` ("active" by
  default; set "pending_deployment" to make a caller wait, then edit the stored record).
  The private key is kept (as Cloudflare keeps it, to present it to origins) but never
  returned; `edge.aop_client_pair()` gives the active pair so a test can act as the edge.

Authentication and permissions, as on the real API: a token needs "SSL and Certificates"
(scopes "ssl:read", "ssl:edit"; edit implies read) for /certificates and
origin_tls_client_auth, and "Zone Settings" ("zone_settings:read", "zone_settings:edit")
for settings/ssl; otherwise 403 code 10000. The legacy Origin CA key
(`X-Auth-User-Service-Key: <edge.origin_ca_key>`) authenticates the /certificates
endpoints only.

Errors. Documented or observed: 1012 for a certificate list without zone_id, 1007
"Invalid value for zone setting ssl". The real codes for a bad CSR, a hostname outside the
account's zones, an unknown certificate or a bad client certificate upload are not
published; the fake's are the constants below (all 400, except 404 for an unknown id), so
callers must branch on the status, not on these codes.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
import uuid
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Json = dict[str, Any]

IPS = "GET /ips"
CERTS = "/certificates"
CERT = "/certificates/{id}"
SSL = "/zones/{zone_id}/settings/ssl"
AOP = "/zones/{zone_id}/origin_tls_client_auth"
AOP_ONE = AOP + "/{id}"
AOP_SETTINGS = AOP + "/settings"

# The order is the routing order: .../settings must come before .../{id}.
ROUTES: tuple[tuple[str, str], ...] = (
    ("GET", "/ips"),
    ("POST", CERTS),
    ("GET", CERTS),
    ("GET", CERT),
    ("DELETE", CERT),
    ("GET", SSL),
    ("PATCH", SSL),
    ("GET", AOP_SETTINGS),
    ("PUT", AOP_SETTINGS),
    ("POST", AOP),
    ("GET", AOP),
    ("GET", AOP_ONE),
    ("DELETE", AOP_ONE),
)
ENDPOINTS = frozenset(f"{method} {path}" for method, path in ROUTES)
PUBLIC_ENDPOINTS = frozenset({IPS})
ORIGIN_CA_ENDPOINTS = frozenset(e for e in ENDPOINTS if e.split()[1].startswith(CERTS))
SCOPES = frozenset({"ssl:read", "ssl:edit", "zone_settings:read", "zone_settings:edit"})

# Cloudflare's published ranges (https://www.cloudflare.com/ips/), the fake's default.
CLOUDFLARE_IPV4 = (
    "173.245.48.0/20 103.21.244.0/22 103.22.200.0/22 103.31.4.0/22 141.101.64.0/18 "
    "108.162.192.0/18 190.93.240.0/20 188.114.96.0/20 197.234.240.0/22 198.41.128.0/17 "
    "162.158.0.0/15 104.16.0.0/13 104.24.0.0/14 172.64.0.0/13 131.0.72.0/22"
).split()
CLOUDFLARE_IPV6 = (
    "2400:cb00::/32 2606:4700::/32 2803:f800::/32 2405:b500::/32 2405:8100::/32 "
    "2a06:98c0::/29 2c0f:f248::/32"
).split()

REQUEST_TYPES = ("origin-rsa", "origin-ecc")
VALIDITIES = frozenset({7, 30, 90, 365, 730, 1095, 5475})
SSL_MODES = ("off", "flexible", "full", "strict")

# The fake's own codes where Cloudflare publishes none (see the module docstring).
BAD_REQUEST = 1004  # a field missing or of the wrong type or value
BAD_CSR = 1010
HOSTNAME_NOT_IN_ZONE = 1011
NO_ZONE_ID = 1012  # observed on the real API
CERT_NOT_FOUND = 1013
BAD_SETTING_VALUE = 1007  # observed on the real API
BAD_CLIENT_CERT = 1401
KEY_MISMATCH = 1402
AOP_NOT_FOUND = 1403


class ApiError(Exception):
    """An error answer: rendered as the v4 error envelope with this status and code."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Reply:
    result: Any
    result_info: Json | None = None


@dataclass(frozen=True)
class EdgeRequest:
    """What a handler sees: the fake's zone, and the request's parameters and body."""

    zone_id: str
    zone_name: str
    query: Mapping[str, str]
    params: Mapping[str, str]
    body: Any


EdgeHandler = Callable[[EdgeRequest], Reply]


@dataclass
class OriginCA:
    """A root CA: the key signs, `pem` is what a client trusts."""

    key: CertificateIssuerPrivateKeyTypes
    cert: x509.Certificate

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()


def make_origin_ca(request_type: str = "origin-ecc") -> OriginCA:
    """A fresh self-signed root, RSA for "origin-rsa" and P-256 for "origin-ecc", as
    Cloudflare has one Origin CA root per signature type."""
    key: CertificateIssuerPrivateKeyTypes
    if request_type == "origin-rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Fake CloudFlare, Inc."),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Fake Cloudflare Origin CA ({request_type})"),
        ]
    )
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365 * 30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return OriginCA(key, cert)


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not cert_sign,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def needed_scopes(endpoint: str, scopes: Set[str]) -> set[str]:
    """The scopes a token needs for `endpoint`; an edit scope implies its read scope."""
    if endpoint in PUBLIC_ENDPOINTS:
        return set()
    method, path = endpoint.split(" ", 1)
    family = "zone_settings" if path == SSL else "ssl"
    if method == "GET" and f"{family}:edit" in scopes:
        return set()
    return {f"{family}:read" if method == "GET" else f"{family}:edit"}


def go_time(moment: datetime) -> str:
    """Go's time.String() in UTC, the format of Origin CA `expires_on`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_hostname(hostname: Any, zone_name: str) -> str:
    """The hostname, lower-case, if Origin CA would sign it for this zone; else ApiError.
    Rules as documented: FQDNs in the zone, wildcards only as one leading `*.` label."""
    if not isinstance(hostname, str) or not hostname.strip():
        raise ApiError(400, BAD_REQUEST, "hostnames must be non-empty strings")
    name = hostname.strip().rstrip(".").lower()
    bare = name.removeprefix("*.")
    if "*" in bare or "." not in bare:
        raise ApiError(400, BAD_REQUEST, f"Invalid hostname {hostname!r}")
    if bare != zone_name and not bare.endswith("." + zone_name):
        raise ApiError(
            400,
            HOSTNAME_NOT_IN_ZONE,
            f"The hostname {name} does not belong to a zone on this account",
        )
    return name


def parse_csr(pem: Any) -> x509.CertificateSigningRequest:
    if not isinstance(pem, str) or not pem.strip():
        raise ApiError(400, BAD_REQUEST, "csr is required")
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
    except ValueError as exc:
        raise ApiError(400, BAD_CSR, f"Failed to parse the CSR: {exc}") from None
    if not csr.is_signature_valid:
        raise ApiError(400, BAD_CSR, "The CSR's signature is invalid")
    return csr


def issue(
    ca: OriginCA, csr: x509.CertificateSigningRequest, hostnames: list[str], days: int
) -> x509.Certificate:
    """The origin certificate: the CSR's key, the hostnames as SANs (whatever the CSR
    asked for, as Origin CA does), server and client auth, valid `days` from now."""
    start = datetime.now(UTC).replace(second=0, microsecond=0)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CloudFlare, Inc."),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "CloudFlare Origin CA"),
            x509.NameAttribute(NameOID.COMMON_NAME, "CloudFlare Origin Certificate"),
        ]
    )
    eku = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(h) for h in hostnames]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )


def page(items: list[Json], query: Mapping[str, str], default_per_page: int) -> Reply:
    try:
        number = int(query.get("page", "1"))
        per_page = int(query.get("per_page", str(default_per_page)))
    except ValueError:
        raise ApiError(400, BAD_REQUEST, "page and per_page must be integers") from None
    if number < 1 or per_page < 1:
        raise ApiError(400, BAD_REQUEST, "page and per_page must be positive")
    chunk = items[(number - 1) * per_page : number * per_page]
    info = {
        "page": number,
        "per_page": per_page,
        "count": len(chunk),
        "total_count": len(items),
        "total_pages": max(1, -(-len(items) // per_page)),
    }
    return Reply(chunk, info)


def _signature_name(cert: x509.Certificate) -> str:
    """Cloudflare's spelling of the signature algorithm, e.g. "SHA256WithRSA"."""
    digest = (cert.signature_hash_algorithm.name if cert.signature_hash_algorithm else "").upper()
    if isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
        return f"ECDSAWith{digest}"
    return f"{digest}WithRSA"


def _issuer_name(cert: x509.Certificate) -> str:
    for oid in (NameOID.ORGANIZATION_NAME, NameOID.COMMON_NAME):
        values = cert.issuer.get_attributes_for_oid(oid)
        if values:
            return str(values[0].value)
    return cert.issuer.rfc4514_string()


def _same_key(cert: x509.Certificate, key: Any) -> bool:
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(cert.public_key().public_bytes(*raw) == key.public_key().public_bytes(*raw))


@dataclass
class CloudflareEdge:
    ipv4_cidrs: list[str] = field(default_factory=lambda: list(CLOUDFLARE_IPV4))
    ipv6_cidrs: list[str] = field(default_factory=lambda: list(CLOUDFLARE_IPV6))
    origin_ca_key: str = field(default_factory=lambda: "v1.0-" + secrets.token_hex(40))
    cas: dict[str, OriginCA] = field(default_factory=dict)  # by request type
    certificates: dict[str, Json] = field(default_factory=dict)  # Origin CA, by id
    ssl_mode: str = "full"
    ssl_modified_on: str | None = None
    aop_certs: dict[str, Json] = field(default_factory=dict)  # by id, oldest first
    aop_enabled: bool = False
    aop_status: str = "active"  # the status of a new upload

    def __post_init__(self) -> None:
        self._seq = itertools.count(1)

    # -- for tests ------------------------------------------------------------------

    @property
    def ips_etag(self) -> str:
        digest = hashlib.md5(
            "\n".join(self.ipv4_cidrs + self.ipv6_cidrs).encode(), usedforsecurity=False
        )
        return digest.hexdigest()

    def ca(self, request_type: str) -> OriginCA:
        """The root that signs `request_type` certificates, made on first use."""
        if request_type not in self.cas:
            self.cas[request_type] = make_origin_ca(request_type)
        return self.cas[request_type]

    def aop_client_pair(self) -> tuple[str, str] | None:
        """(certificate PEM, private key PEM) that Cloudflare would present to origins:
        the newest active upload while the zone setting is on, else None."""
        if not self.aop_enabled:
            return None
        active = [c for c in self.aop_certs.values() if c["status"] == "active"]
        if not active:
            return None
        newest = max(active, key=lambda c: c["_seq"])
        return newest["certificate"], newest["_private_key"]

    def handlers(self) -> dict[str, EdgeHandler]:
        """Endpoint ("METHOD /path") -> handler; register them in `ROUTES` order."""
        table: dict[str, EdgeHandler] = {
            IPS: self._ips,
            "POST " + CERTS: self._create_cert,
            "GET " + CERTS: self._list_certs,
            "GET " + CERT: self._get_cert,
            "DELETE " + CERT: self._revoke_cert,
            "GET " + SSL: self._get_ssl,
            "PATCH " + SSL: self._patch_ssl,
            "GET " + AOP_SETTINGS: self._get_aop_settings,
            "PUT " + AOP_SETTINGS: self._put_aop_settings,
            "POST " + AOP: self._upload_aop,
            "GET " + AOP: self._list_aop,
            "GET " + AOP_ONE: self._get_aop,
            "DELETE " + AOP_ONE: self._delete_aop,
        }
        return table

    # -- IP ranges --------------------------------------------------------------------

    def _ips(self, request: EdgeRequest) -> Reply:
        return Reply(
            {
                "ipv4_cidrs": list(self.ipv4_cidrs),
                "ipv6_cidrs": list(self.ipv6_cidrs),
                "etag": self.ips_etag,
            }
        )

    # -- Origin CA --------------------------------------------------------------------

    def _create_cert(self, request: EdgeRequest) -> Reply:
        body = _object(request.body)
        request_type = body.get("request_type")
        if request_type not in REQUEST_TYPES:
            raise ApiError(400, BAD_REQUEST, f"request_type must be one of {REQUEST_TYPES}")
        days = body.get("requested_validity", 5475)
        if type(days) is not int or days not in VALIDITIES:
            raise ApiError(
                400, BAD_REQUEST, f"requested_validity must be one of {sorted(VALIDITIES)}"
            )
        hostnames = body.get("hostnames")
        if not isinstance(hostnames, list) or not hostnames:
            raise ApiError(400, BAD_REQUEST, "hostnames must be a non-empty list")
        names = list(dict.fromkeys(check_hostname(h, request.zone_name) for h in hostnames))
        csr = parse_csr(body.get("csr"))
        cert = issue(self.ca(request_type), csr, names, days)
        record: Json = {
            "id": str(cert.serial_number),
            "certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "csr": body["csr"],
            "hostnames": names,
            "request_type": request_type,
            "requested_validity": days,
            "expires_on": go_time(cert.not_valid_after_utc),
            "_zone_id": request.zone_id,
            "_revoked_at": None,
            "_seq": next(self._seq),
        }
        self.certificates[record["id"]] = record
        return Reply(record)

    def _list_certs(self, request: EdgeRequest) -> Reply:
        zone_id = request.query.get("zone_id")
        if not zone_id:
            raise ApiError(
                400,
                NO_ZONE_ID,
                "Please provide a zone id when requesting a stored certificate, "
                "or fetch by serial number",
            )
        if zone_id != request.zone_id:
            raise ApiError(403, 10000, "Authentication error")
        items = [
            c
            for c in sorted(self.certificates.values(), key=lambda c: c["_seq"])
            if c["_zone_id"] == zone_id and c["_revoked_at"] is None
        ]
        return page(items, request.query, 20)

    def _cert(self, request: EdgeRequest) -> Json:
        record = self.certificates.get(request.params["id"])
        if record is None:
            raise ApiError(404, CERT_NOT_FOUND, "Certificate not found")
        return record

    def _get_cert(self, request: EdgeRequest) -> Reply:
        return Reply(self._cert(request))

    def _revoke_cert(self, request: EdgeRequest) -> Reply:
        record = self._cert(request)
        if record["_revoked_at"] is None:
            record["_revoked_at"] = iso(datetime.now(UTC))
        return Reply({"id": record["id"], "revoked_at": record["_revoked_at"]})

    # -- SSL mode ---------------------------------------------------------------------

    def _ssl(self) -> Reply:
        return Reply(
            {
                "id": "ssl",
                "value": self.ssl_mode,
                "editable": True,
                "modified_on": self.ssl_modified_on,
            }
        )

    def _get_ssl(self, request: EdgeRequest) -> Reply:
        return self._ssl()

    def _patch_ssl(self, request: EdgeRequest) -> Reply:
        value = _object(request.body).get("value")
        if value not in SSL_MODES:
            raise ApiError(400, BAD_SETTING_VALUE, "Invalid value for zone setting ssl")
        self.ssl_mode = value
        self.ssl_modified_on = iso(datetime.now(UTC))
        return self._ssl()

    # -- zone-level authenticated origin pulls -------------------------------------------

    def _get_aop_settings(self, request: EdgeRequest) -> Reply:
        return Reply({"enabled": self.aop_enabled})

    def _put_aop_settings(self, request: EdgeRequest) -> Reply:
        enabled = _object(request.body).get("enabled")
        if not isinstance(enabled, bool):
            raise ApiError(400, BAD_REQUEST, "enabled must be a boolean")
        self.aop_enabled = enabled
        return Reply({"enabled": enabled})

    def _upload_aop(self, request: EdgeRequest) -> Reply:
        body = _object(request.body)
        cert_pem, key_pem = body.get("certificate"), body.get("private_key")
        if not isinstance(cert_pem, str) or not isinstance(key_pem, str):
            raise ApiError(400, BAD_REQUEST, "certificate and private_key are required")
        try:
            cert = x509.load_pem_x509_certificate(cert_pem.encode())
        except ValueError:
            raise ApiError(
                400, BAD_CLIENT_CERT, "The certificate is not a valid PEM X.509 certificate"
            ) from None
        try:
            key = serialization.load_pem_private_key(key_pem.encode(), password=None)
        except (ValueError, TypeError):
            raise ApiError(
                400, BAD_CLIENT_CERT, "The private key is not a valid unencrypted PEM key"
            ) from None
        if not _same_key(cert, key):
            raise ApiError(400, KEY_MISMATCH, "The private key does not match the certificate")
        if cert.not_valid_after_utc <= datetime.now(UTC):
            raise ApiError(400, BAD_CLIENT_CERT, "The certificate has expired")
        record: Json = {
            "id": str(uuid.uuid4()),
            "certificate": cert_pem,
            "expires_on": iso(cert.not_valid_after_utc),
            "issuer": _issuer_name(cert),
            "signature": _signature_name(cert),
            "status": self.aop_status,
            "uploaded_on": iso(datetime.now(UTC)),
            "_private_key": key_pem,
            "_seq": next(self._seq),
        }
        self.aop_certs[record["id"]] = record
        return Reply(self._aop_view(record))

    def _aop_view(self, record: Json) -> Json:
        return {**record, "enabled": self.aop_enabled}

    def _list_aop(self, request: EdgeRequest) -> Reply:
        ordered = sorted(self.aop_certs.values(), key=lambda c: c["_seq"])
        return Reply([self._aop_view(c) for c in ordered])

    def _aop(self, request: EdgeRequest) -> Json:
        record = self.aop_certs.get(request.params["id"])
        if record is None:
            raise ApiError(404, AOP_NOT_FOUND, "Certificate not found")
        return record

    def _get_aop(self, request: EdgeRequest) -> Reply:
        return Reply(self._aop_view(self._aop(request)))

    def _delete_aop(self, request: EdgeRequest) -> Reply:
        record = self._aop(request)
        del self.aop_certs[record["id"]]
        return Reply({**self._aop_view(record), "status": "pending_deletion"})


def _object(body: Any) -> Json:
    if not isinstance(body, dict):
        raise ApiError(400, 9207, "Request body is invalid.")
    return body
