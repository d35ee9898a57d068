"""The worker's origin certificate (issue 14): Cloudflare Origin CA's, for a key that
never leaves this machine, served by Traefik, which requires the deployment's
authenticated-origin-pull client certificate on 443.

Contract:
- `OriginTls.check(signer)` asks the control plane's policy (`OriginTlsPolicy`); with no
  hostnames (the local provider) it touches nothing. Otherwise, when `renewal_reason`
  says so, it makes a fresh ECDSA P-256 key and a CSR for exactly the policy's
  hostnames, sends only the CSR, checks the answer is a certificate for that key, and
  then writes the key (0600), the certificate and the client CA under
  STATE_DIR/origin-tls/ and Traefik's TLS file (`TLS_FILE` in TRAEFIK_DYNAMIC_DIR),
  all atomically, the key last-but-one and Traefik's file last, so Traefik never reads
  a certificate without its key. It returns the seconds until the next check.
- Traefik's file embeds the PEMs (Traefik reads a file provider's certFile, keyFile and
  caFiles as content too), so Traefik needs no access to STATE_DIR; the file is 0640
  with the group of `traefik_group` when that group exists, else 0600. Its TLS options
  `default` require and verify a client certificate issued as `client_ca`, for every
  router and for a handshake that matches none.
- Fail closed (issue 14, point 3): `prepare()` runs at the agent's start, before any
  route is written. With a saved certificate it re-serves it; otherwise, unless the
  control plane last said origin TLS is off or the routers use no TLS (the local
  provider's plain HTTP), it writes `closed_tls_config()`: a client certificate is
  required from a CA whose key was discarded, so every TLS handshake is refused, even
  Cloudflare's, until the real file replaces it (`startup_file` is the pure rule). A
  policy with no hostnames (or a control plane that has no origin TLS: the daemon calls
  `off()`) removes that closed file and remembers "off" for the next start; a policy
  with hostnames and no TLS file (origin TLS turned on later) serves it at once. A TLS
  file that cannot be written at start stops the agent (agent/daemon.py).
- `renewal_reason(current, hostnames, now)` is the pure renewal rule; `expires_at()`
  is what the heartbeat reports.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.errors import AgentError
from agent.state import atomic_write
from shared.protocol import OriginCertReply, OriginCertRequest, OriginTlsPolicy

DIRECTORY = "origin-tls"
KEY_FILE, CERT_FILE, CA_FILE = "key.pem", "cert.pem", "client-ca.pem"
# Not "clawfleet-*": route pruning (agent/traefik.py) never sees it as a user's route.
TLS_FILE = "tls-origin.yaml"
OFF_FILE = "off"  # in DIRECTORY: the control plane last said origin TLS is off
# First line of the closed file (JSON is YAML, so a YAML comment may precede it).
CLOSED_MARK = b"# clawfleet: every handshake refused until the origin certificate arrives\n"
DAY = 86400.0
RENEW_BEFORE = 30 * DAY  # a third of the 90 days the control plane asks Cloudflare for
CHECK_EVERY = 6 * 3600.0  # a hand-rotated client CA reaches Traefik within this
OFF_CHECK_EVERY = 3600.0

PEM = serialization.Encoding.PEM


class OriginTlsError(AgentError):
    """The control plane's answer cannot be served (not for our key or names)."""

    code = "origin_tls"


@dataclass(frozen=True)
class CertInfo:
    not_before: float
    not_after: float
    hostnames: frozenset[str]


class Signer:
    """The two signed requests (agent/client.py), bound to this worker's credentials."""

    def __init__(
        self,
        policy: Callable[[], Awaitable[OriginTlsPolicy]],
        sign: Callable[[OriginCertRequest], Awaitable[OriginCertReply]],
    ) -> None:
        self.policy, self.sign = policy, sign


def renewal_reason(
    current: CertInfo | None,
    hostnames: Sequence[str],
    now: float,
    renew_before: float = RENEW_BEFORE,
) -> str | None:
    """Why a new certificate is needed now, or None. Renew when there is none, when it
    names other hosts than the policy, when less than `renew_before` is left or a third
    of its life, whichever is longer (a short certificate renews at two thirds), or when
    it is not valid yet (a clock gone back: better a new one than a refused handshake)."""
    if current is None:
        return "no certificate"
    if current.hostnames != frozenset(hostnames):
        return "other host names"
    if now < current.not_before:
        return "not valid yet"
    margin = max(renew_before, (current.not_after - current.not_before) / 3)
    if current.not_after - now <= margin:
        return "expires soon" if now < current.not_after else "expired"
    return None


def cert_info(pem: bytes) -> CertInfo:
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = frozenset(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = frozenset()
    return CertInfo(
        cert.not_valid_before_utc.astimezone(UTC).timestamp(),
        cert.not_valid_after_utc.astimezone(UTC).timestamp(),
        names,
    )


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def make_csr(key: ec.EllipticCurvePrivateKey, hostnames: Sequence[str]) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(h) for h in hostnames]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(PEM).decode()


StartupFile = Literal["saved", "closed", "none"]


def startup_file(*, saved: bool, off: bool, routers_tls: bool) -> StartupFile:
    """What Traefik's TLS file is at the agent's start, before any route: the saved
    certificate, the closed file, or nothing (origin TLS off, or plain HTTP routers,
    which TLS options never reach)."""
    if saved:
        return "saved"
    return "closed" if routers_tls and not off else "none"


def _options(client_ca: str) -> dict[str, object]:
    """TLS options `default`: every router's and a handshake's that matches none."""
    return {
        "default": {
            "minVersion": "VersionTLS12",
            "clientAuth": {
                "caFiles": [client_ca],
                "clientAuthType": "RequireAndVerifyClientCert",
            },
        }
    }


def _dump(config: dict[str, object]) -> bytes:
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def traefik_tls_config(cert: str, key: str, client_ca: str) -> bytes:
    """Traefik's dynamic TLS config: our certificate, and client certificates required."""
    certificates = [{"certFile": cert, "keyFile": key}]
    return _dump({"tls": {"certificates": certificates, "options": _options(client_ca)}})


def closed_tls_config(now: datetime | None = None) -> bytes:
    """TLS options that refuse every handshake: the only client CA is one made here
    whose key is dropped when this returns, so no client can present a certificate
    it issued. Traefik keeps its self-signed default certificate meanwhile."""
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clawfleet closed (key discarded)")])
    start = (now or datetime.now(UTC)) - timedelta(hours=1)
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return CLOSED_MARK + _dump({"tls": {"options": _options(ca.public_bytes(PEM).decode())}})


def _same_key(cert_pem: str, key: ec.EllipticCurvePrivateKey) -> bool:
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError:
        return False
    return cert.public_key().public_bytes(*raw) == key.public_key().public_bytes(*raw)


class OriginTls:
    def __init__(
        self,
        state_dir: Path,
        traefik_dir: Path,
        *,
        traefik_group: str = "",
        routers_tls: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dir = state_dir / DIRECTORY
        self.traefik_file = traefik_dir / TLS_FILE
        self._group = traefik_group
        self._routers_tls = routers_tls
        self._clock = clock

    def current(self) -> CertInfo | None:
        try:
            return cert_info((self.dir / CERT_FILE).read_bytes())
        except (OSError, ValueError):
            return None

    def expires_at(self) -> float | None:
        info = self.current()
        return None if info is None else info.not_after

    async def check(self, signer: Signer) -> float:
        policy = await signer.policy()
        if not policy.hostnames:
            self.off()
            return OFF_CHECK_EVERY
        (self.dir / OFF_FILE).unlink(missing_ok=True)  # a restart from now on starts closed
        if self._routers_tls and not self.traefik_file.exists():
            self._serve(closed_tls_config())  # turned on (or the file lost): closed till signed
        if renewal_reason(self.current(), policy.hostnames, self._clock()) is None:
            if policy.client_ca and policy.client_ca != self._read(CA_FILE):
                self._save_ca(policy.client_ca)
                self._write_traefik()
            return CHECK_EVERY
        key = new_key()
        reply = await signer.sign(OriginCertRequest(csr=make_csr(key, policy.hostnames)))
        if not _same_key(reply.certificate, key):
            raise OriginTlsError("the control plane answered a certificate for another key")
        got = cert_info(reply.certificate.encode())
        if got.hostnames != frozenset(policy.hostnames):
            raise OriginTlsError(f"the certificate names {sorted(got.hostnames)}, not the policy's")
        atomic_write(self.dir / KEY_FILE, key_pem(key), mode=0o600)
        atomic_write(self.dir / CERT_FILE, reply.certificate.encode(), mode=0o644)
        self._save_ca(reply.client_ca)
        self._write_traefik()
        return CHECK_EVERY

    def restore(self) -> bool:
        """Rewrites Traefik's file from the saved ones (a start before any answer)."""
        if self.current() is None or not self._read(CA_FILE) or not self._read(KEY_FILE):
            return False
        self._write_traefik()
        return True

    def prepare(self) -> StartupFile:
        """At start, before any route: the saved certificate, else the closed file
        (`startup_file`). What it did is returned, for the log."""
        off = (self.dir / OFF_FILE).exists()
        done = startup_file(saved=self.restore(), off=off, routers_tls=self._routers_tls)
        if done == "closed":
            self._serve(closed_tls_config())
        return done

    def off(self) -> None:
        """The control plane signs nothing: no closed file (an older real one stays, as
        before), and the next start opens with none."""
        if not (self.dir / OFF_FILE).exists():
            atomic_write(self.dir / OFF_FILE, b"", mode=0o644)
        with contextlib.suppress(FileNotFoundError):
            if self.traefik_file.read_bytes().startswith(CLOSED_MARK):
                self.traefik_file.unlink()

    def _read(self, name: str) -> str:
        try:
            return (self.dir / name).read_text()
        except OSError:
            return ""

    def _save_ca(self, pem: str) -> None:
        x509.load_pem_x509_certificate(pem.encode())  # ValueError before Traefik sees it
        atomic_write(self.dir / CA_FILE, pem.encode(), mode=0o644)

    def _write_traefik(self) -> None:
        self._serve(
            traefik_tls_config(self._read(CERT_FILE), self._read(KEY_FILE), self._read(CA_FILE))
        )

    def _serve(self, content: bytes) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.traefik_file.read_bytes() == content:
                return
        gid = self._gid()
        # Group set before the rename: Traefik never sees the file unreadable to it.
        staged = self.traefik_file.with_name(f".{TLS_FILE}.next")
        atomic_write(staged, content, mode=0o600 if gid is None else 0o640)
        if gid is not None:
            os.chown(staged, -1, gid)
        os.replace(staged, self.traefik_file)

    def _gid(self) -> int | None:
        if not self._group:
            return None
        try:
            return grp.getgrnam(self._group).gr_gid
        except KeyError:
            return None
