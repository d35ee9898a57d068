"""The deployment's own authenticated-origin-pull certificate (issue 14): the client
certificate Cloudflare presents to our workers, made and owned by this control plane,
so no other Cloudflare customer's zone can reach our origins (as Cloudflare's shared
certificate would let it).

Contract:
- `PullStore(path, keyring).load_or_create()` returns the pair (`PullPair`): read from
  `path` (JSON: the certificate PEM and the private key Fernet-encrypted with the
  keyring, mode 0600, written atomically), or made once (ECDSA P-256, self-signed,
  clientAuth, valid `VALIDITY_DAYS`) and saved before it is used anywhere. A file that
  is there but unreadable is a `ConfigurationError` naming it, never replaced.
- `ensure_uploaded(api, pair)` makes it the zone's active origin_tls_client_auth
  certificate (uploads it unless a certificate with the same PEM is there) and turns
  the zone setting on; idempotent, each call bounded by CloudflareApi's retry policy.
  It returns only once Cloudflare lists it as `active` (an upload is
  `pending_deployment` for a while, when Cloudflare does not present it yet); until
  then it raises, and the caller retries. Failures are `OriginTlsError`
  (IntegrationError).
- Workers trust `pair.certificate` itself as the only client CA (agent/origin_tls.py).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from control.dns.cloudflare_api import CloudflareApi, field
from control.dns.provider import DnsError
from control.errors import ConfigurationError, IntegrationError
from control.keyring import Keyring

VALIDITY_DAYS = 3650  # Cloudflare keeps presenting it; a new deployment key means a new pair
COMMON_NAME = "clawfleet origin pull"
ACTIVE = "active"  # Cloudflare presents an upload only once it is deployed


class OriginTlsError(IntegrationError):
    """Cloudflare refused or failed an origin TLS call (signing, origin pulls, SSL mode)."""

    code = "origin_tls_error"

    @classmethod
    def of(cls, error: DnsError, permission: str) -> OriginTlsError:
        """`error` as ours; a 401/403 names the token's missing permission."""
        message = error.message
        if error.upstream_status in (401, 403):
            message = f"CLOUDFLARE_API_TOKEN lacks {permission} on this zone: {message}"
        return cls(
            message,
            upstream_status=error.upstream_status,
            retry_after=error.retry_after,
        )


@dataclass(frozen=True)
class PullPair:
    certificate: str  # PEM
    private_key: str = ""  # PEM; only ever sent to Cloudflare


def make_pair(now: datetime | None = None) -> PullPair:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, COMMON_NAME)])
    start = (now or datetime.now(UTC)) - timedelta(hours=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return PullPair(cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode())


class PullStore:
    def __init__(self, path: Path, keyring: Keyring) -> None:
        self.path, self._keyring = path, keyring

    def load_or_create(self) -> PullPair:
        try:
            stored = json.loads(self.path.read_text())
        except FileNotFoundError:
            pair = make_pair()
            self._save(pair)
            return pair
        except (OSError, ValueError) as exc:
            raise self._unreadable(exc) from None
        if not isinstance(stored, dict) or not all(
            isinstance(stored.get(k), str) for k in ("certificate", "private_key")
        ):
            raise self._unreadable(ValueError("not a certificate and an encrypted key"))
        return PullPair(stored["certificate"], self._keyring.decrypt(stored["private_key"]))

    def _unreadable(self, exc: Exception) -> ConfigurationError:
        # Never replaced silently: Cloudflare presents the pair this file holds.
        return ConfigurationError(
            f"{self.path} is unreadable ({exc}); restore it from a backup, or move it away "
            "to make and upload a new pair (workers take its client CA at their next check)"
        )

    def _save(self, pair: PullPair) -> None:
        text = json.dumps(
            {
                "certificate": pair.certificate,
                "private_key": self._keyring.encrypt(pair.private_key),
            }
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def deployed_status(listed: list[tuple[str, str]], certificate: str) -> str | None:
    """The best status Cloudflare lists for `certificate` ((PEM, status) pairs, any
    order): "active" if any copy is, else the first copy's, None when none is there."""
    ours = [status for pem, status in listed if pem.strip() == certificate.strip()]
    return "active" if ACTIVE in ours else (ours[0] if ours else None)


async def _listed(api: CloudflareApi) -> list[tuple[str, str]]:
    zone, sdk = api.zone_id, api.client.origin_tls_client_auth
    listed = await api.request(
        "list origin pull certificates", lambda: sdk.zone_certificates.list(zone_id=zone)
    )
    return [
        (field(c, "certificate", "") or "", field(c, "status", "") or "") for c in listed.result
    ]


async def ensure_uploaded(api: CloudflareApi, pair: PullPair) -> None:
    zone, sdk = api.zone_id, api.client.origin_tls_client_auth
    try:
        status = deployed_status(await _listed(api), pair.certificate)
        if status is None:
            await api.request(
                "upload origin pull certificate",
                lambda: sdk.zone_certificates.create(
                    zone_id=zone, certificate=pair.certificate, private_key=pair.private_key
                ),
                repeatable=False,
            )
            status = deployed_status(await _listed(api), pair.certificate)
        await api.request(
            "enable origin pulls", lambda: sdk.settings.update(zone_id=zone, enabled=True)
        )
    except DnsError as exc:
        raise OriginTlsError.of(exc, "SSL and Certificates: Edit") from None
    if status != ACTIVE:
        # Until Cloudflare presents it, a worker requiring it would refuse every request.
        raise OriginTlsError(
            f"the origin pull certificate is {status or 'missing'} at Cloudflare, not "
            f"{ACTIVE}; workers get no certificate until it is"
        )
