"""Origin TLS for workers (issue 14), the control plane's half: it has Cloudflare's
Origin CA sign a worker's CSR, and sets up the deployment's authenticated origin pulls.

Contract:
- `OriginTls.policy()` is what a worker may ask for (`OriginTlsPolicy`): exactly
  `allowed_hostnames(BASE_DOMAIN)` and the client CA workers must require.
- `OriginTls.sign(csr_pem)` is `admit` then `issue`: `admit` checks the CSR
  (`tls_rules.check_csr`: its names are never trusted beyond equality with the allowed
  ones) and that origin pulls are set up, with no I/O, so a caller can refuse before it
  writes anything; `issue` sends Cloudflare the allowed names (not the CSR's) and
  returns `OriginCertReply`. A create is retried only after a 429
  (CloudflareApi's pure retry rule); the worker retries the rest. It gets no private
  key and sends none.
- `OriginTls.start()` runs once at start-up: reads the zone's SSL mode and logs a
  warning naming it unless it is "strict" (one that cannot be read, for a token
  without Zone Settings: Read or an outage, is a warning naming why, never a reason
  to stop), then makes sure the deployment's
  origin-pull certificate is uploaded and enabled (`origin_pull.ensure_uploaded`).
  Workers are refused a certificate (503) until that has succeeded once, because
  Traefik would otherwise require a client certificate Cloudflare does not present.
- Failures are `OriginTlsError` (IntegrationError: 503 to the worker, which retries).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from control.dns.cloudflare_api import CloudflareApi, field
from control.dns.provider import DnsError
from control.edge import tls_rules
from control.edge.origin_pull import OriginTlsError, PullPair, PullStore, ensure_uploaded
from control.errors import ServiceUnavailable
from shared.protocol import OriginCertReply, OriginTlsPolicy

log = logging.getLogger(__name__)

REQUEST_TYPE: Final = "origin-ecc"


class NotReady(ServiceUnavailable):
    code = "origin_tls_not_ready"


class OriginTls:
    def __init__(self, api: CloudflareApi, base_domain: str, store: PullStore) -> None:
        self.api = api
        self.hostnames = tls_rules.allowed_hostnames(base_domain)
        self._store = store
        self._pair: PullPair | None = None
        self.ssl_mode: str | None = None

    def policy(self) -> OriginTlsPolicy:
        ca = self._pair.certificate if self._pair else ""
        return OriginTlsPolicy(hostnames=list(self.hostnames), client_ca=ca)

    async def start(self) -> None:
        try:
            self.ssl_mode = await self.read_ssl_mode()
        except OriginTlsError as exc:
            # Only a check: a token without Zone Settings: Read, or an outage, must not
            # keep every worker without a certificate.
            log.warning(
                "Cloudflare SSL mode of the zone could not be read (%s); origin TLS is set "
                "up all the same: check in Cloudflare's dashboard that SSL/TLS is Full (strict)",
                exc.message,
            )
            self.ssl_mode = None
        else:
            warning = tls_rules.ssl_mode_warning(self.ssl_mode)
            if warning:
                log.warning("%s", warning)
        pair = self._store.load_or_create()
        await ensure_uploaded(self.api, pair)
        self._pair = PullPair(pair.certificate)  # the key stays on disk, encrypted

    async def read_ssl_mode(self) -> str | None:
        zone = self.api.zone_id
        try:
            setting = await self.api.request(
                "read the zone's SSL mode",
                lambda: self.api.client.zones.settings.get("ssl", zone_id=zone),
            )
        except DnsError as exc:
            raise OriginTlsError.of(exc, "Zone Settings: Read") from None
        value = field(setting, "value")
        return value if isinstance(value, str) else None

    def admit(self, csr_pem: str) -> x509.CertificateSigningRequest:
        """The CSR, if it may be signed now: BadCsr (400) or NotReady (503) otherwise."""
        csr = tls_rules.check_csr(csr_pem, self.hostnames)
        if self._pair is None:
            raise NotReady("origin pulls are not set up at Cloudflare yet; retry later")
        return csr

    async def sign(self, csr_pem: str) -> OriginCertReply:
        return await self.issue(csr_pem, self.admit(csr_pem))

    async def issue(self, csr_pem: str, csr: x509.CertificateSigningRequest) -> OriginCertReply:
        """Has Cloudflare sign an admitted CSR (`admit`) for the allowed names."""
        assert self._pair is not None, "admit() first"
        client_ca = self._pair.certificate
        try:
            issued = await self.api.request(
                "sign an origin certificate",
                lambda: self.api.client.origin_ca_certificates.create(
                    csr=csr_pem,
                    hostnames=list(self.hostnames),
                    request_type=REQUEST_TYPE,
                    requested_validity=tls_rules.VALIDITY_DAYS,
                ),
                repeatable=False,
            )
        except DnsError as exc:
            raise OriginTlsError.of(exc, "SSL and Certificates: Edit") from None
        pem = field(issued, "certificate")
        if not isinstance(pem, str):
            raise OriginTlsError("Cloudflare Origin CA answered no certificate")
        return OriginCertReply(
            certificate=pem, client_ca=client_ca, expires_at=_not_after(pem, csr).timestamp()
        )


def _not_after(pem: str, csr: x509.CertificateSigningRequest) -> datetime:
    """When the issued certificate expires; it must be for the CSR's key."""
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        raise OriginTlsError("Cloudflare Origin CA answered an unreadable certificate") from None
    if cert.public_key().public_bytes(*raw) != csr.public_key().public_bytes(*raw):
        raise OriginTlsError("Cloudflare Origin CA answered a certificate for another key")
    return cert.not_valid_after_utc
