"""Origin TLS over the real worker protocol (issue 14): the real control plane on
127.0.0.1 (Hetzner provider, DNS on the fake Cloudflare API whose Origin CA signs with a
real CA) and the agent's own signed `ControlClient` and `OriginTls`.

- A worker GETs the policy, POSTs its CSR signed, and gets a certificate for its key.
- An unsigned, forged or replayed request, a revoked worker, a CSR for other names, a
  weak key, and an oversized CSR or body are each refused with a precise status and
  code, and Cloudflare is never asked to sign.
- Until the deployment's origin-pull certificate is uploaded, signing answers 503
  `origin_tls_not_ready`; a Cloudflare outage while signing is a 503 `origin_tls_error`
  the agent sees as transient; neither touches what the worker already serves."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from agent import origin_tls as agent_tls
from agent.client import ControlClient, ControlPlaneError, is_transient
from control.appkeys import ORIGIN_TLS
from control.edge.origin_pull import OriginTlsError as OriginPullError
from shared.protocol import MAX_PEM, OriginCertRequest
from tests.agent.test_e2e import until
from tests.fakes.cloudflare import CloudflareFake
from tests.fixtures import ControlPlane
from tests.origin_tls_plane import (  # noqa: F401
    WILDCARD,
    Start,
    joined,
    ready,
    signer,
    tls_plane_fixture,
)
from tests.test_protocol import nonce_rows, set_status
from tests.worker import FakeWorker

SIGN = "POST /certificates"
UPLOAD = "POST /zones/{zone_id}/origin_tls_client_auth"
PATH = "/v1/agent/origin-tls"


@pytest.fixture
async def client(tls_plane: Start) -> AsyncIterator[tuple[ControlPlane, ControlClient]]:
    plane = await tls_plane()
    made = ControlClient(plane.url, timeout=10)
    yield plane, made
    await made.close()


def csr(key: CertificateIssuerPrivateKeyTypes, names: list[str]) -> str:
    built = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(key, hashes.SHA256())
    )
    return built.public_bytes(serialization.Encoding.PEM).decode()


def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


async def refused(call: object) -> ControlPlaneError:
    with pytest.raises(ControlPlaneError) as err:
        await call  # type: ignore[misc]
    return err.value


async def test_a_worker_gets_its_certificate_over_signed_http(
    client: tuple[ControlPlane, ControlClient], cloudflare_fake: CloudflareFake, tmp_path: Path
) -> None:
    plane, cp = client
    worker, secret = await joined(plane, cp)
    policy = await ready(cp, worker, secret)
    assert policy.hostnames == [WILDCARD]
    assert policy.client_ca == cloudflare_fake.edge.aop_client_pair()[0]  # type: ignore[index]

    agent = agent_tls.OriginTls(tmp_path / "state", tmp_path / "traefik")
    assert await agent.check(signer(cp, worker, secret)) == agent_tls.CHECK_EVERY
    assert cloudflare_fake.count(SIGN) == 1
    (call,) = [c for c in cloudflare_fake.calls if c.endpoint == SIGN]
    assert call.body["hostnames"] == [WILDCARD] and call.body["request_type"] == "origin-ecc"
    cert = x509.load_pem_x509_certificate(
        (tmp_path / "state" / agent_tls.DIRECTORY / agent_tls.CERT_FILE).read_bytes()
    )
    cert.verify_directly_issued_by(cloudflare_fake.edge.ca("origin-ecc").cert)
    assert agent.current() == agent_tls.CertInfo(
        cert.not_valid_before_utc.timestamp(),
        cert.not_valid_after_utc.timestamp(),
        frozenset({WILDCARD}),
    )
    # A second check finds it current: no request to sign, nothing rewritten.
    assert await agent.check(signer(cp, worker, secret)) == agent_tls.CHECK_EVERY
    assert cloudflare_fake.count(SIGN) == 1


async def test_refusals_are_precise_and_never_reach_cloudflare(
    client: tuple[ControlPlane, ControlClient], cloudflare_fake: CloudflareFake
) -> None:
    plane, cp = client
    worker, secret = await joined(plane, cp)
    await ready(cp, worker, secret)

    async def sign_refused(pem: str) -> tuple[int, str, str]:
        err = await refused(cp.origin_certificate(worker, secret, OriginCertRequest(csr=pem)))
        return err.status, err.code, err.message

    status, code, message = await sign_refused(csr(p256(), ["*.evil.example.org"]))
    assert (status, code) == (400, "bad_csr")
    assert message == f"csr: it must ask for exactly ['{WILDCARD}'], not ['*.evil.example.org']"
    status, code, _ = await sign_refused(csr(p256(), [WILDCARD, "example.com"]))
    assert (status, code) == (400, "bad_csr")  # more names than allowed, the right one too
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    for key in (weak, ec.generate_private_key(ec.SECP256K1())):
        assert await sign_refused(csr(key, [WILDCARD])) == (
            400,
            "bad_csr",
            "csr: the key must be ECDSA P-256 or RSA of at least 2048 bits",
        )
    status, code, message = await sign_refused("x" * (MAX_PEM + 1))
    assert (status, code) == (400, "malformed_body") and "length <= 16384" in message

    forged = await refused(
        cp.origin_certificate(
            worker, "f" * len(secret), OriginCertRequest(csr=csr(p256(), [WILDCARD]))
        )
    )
    assert (forged.status, forged.code) == (401, "bad_signature")
    async with aiohttp.ClientSession() as http:
        unsigned = await http.post(plane.url + PATH, json={"csr": csr(p256(), [WILDCARD])})
        assert unsigned.status == 401
        assert (await unsigned.json())["error"]["code"] == "missing_signature"
        fake = FakeWorker(plane.url, http, worker, secret)
        huge = await fake.request("POST", PATH, raw_body=b'{"csr": "' + b"A" * 2**20 + b'"}')
        assert (huge.status, huge.body["error"]["code"]) == (413, "payload_too_large")
        good = await fake.request("POST", PATH, {"csr": csr(p256(), [WILDCARD])})
        assert good.status == 200, good.body
        replayed = await fake.replay()
        assert (replayed.status, replayed.body["error"]["code"]) == (401, "replayed_request")
    assert cloudflare_fake.count(SIGN) == 1  # only the good one


@pytest.mark.parametrize("status", ["dead", "deleting", "deleted"])
async def test_a_revoked_worker_gets_no_certificate(
    client: tuple[ControlPlane, ControlClient], cloudflare_fake: CloudflareFake, status: str
) -> None:
    plane, cp = client
    worker, secret = await joined(plane, cp)
    await ready(cp, worker, secret)  # its secret is cached: later requests skip the row
    db = plane.settings.database_path
    await asyncio.to_thread(set_status, db, worker, status)
    before = await asyncio.to_thread(nonce_rows, db, worker)
    for call in (
        cp.origin_tls_policy(worker, secret),
        cp.origin_certificate(worker, secret, OriginCertRequest(csr=csr(p256(), [WILDCARD]))),
    ):
        err = await refused(call)
        assert (err.status, err.code) == (403, "worker_revoked")
    assert await asyncio.to_thread(nonce_rows, db, worker) == before  # wrote nothing
    assert cloudflare_fake.count(SIGN) == 0


async def test_signed_requests_spend_their_nonce_for_good(
    client: tuple[ControlPlane, ControlClient],
) -> None:
    """A captured request cannot be replayed after a control-plane restart, which empties
    the in-memory nonce ledger: the handler persists the nonce, as every other does."""
    plane, cp = client
    worker, secret = await joined(plane, cp)
    await ready(cp, worker, secret)
    db = plane.settings.database_path
    before = await asyncio.to_thread(nonce_rows, db, worker)
    await cp.origin_tls_policy(worker, secret)
    assert await asyncio.to_thread(nonce_rows, db, worker) == before + 1


async def test_no_certificate_until_origin_pulls_are_set_up(
    tls_plane: Start, cloudflare_fake: CloudflareFake, tmp_path: Path
) -> None:
    cloudflare_fake.inject(UPLOAD, 500, 10000, "upstream down", times=100)
    plane = await tls_plane()
    cp = ControlClient(plane.url, timeout=10)
    try:
        await not_ready_then_ready(plane, cp, cloudflare_fake, tmp_path)
    finally:
        await cp.close()


async def not_ready_then_ready(
    plane: ControlPlane, cp: ControlClient, cloudflare_fake: CloudflareFake, tmp_path: Path
) -> None:
    assert plane.app is not None
    service = plane.app[ORIGIN_TLS].service
    assert service is not None
    worker, secret = await joined(plane, cp)
    policy = await cp.origin_tls_policy(worker, secret)
    assert policy.hostnames == [WILDCARD] and policy.client_ca == ""

    agent = agent_tls.OriginTls(tmp_path / "state", tmp_path / "traefik")
    err = await refused(agent.check(signer(cp, worker, secret)))
    assert (err.status, err.code) == (503, "origin_tls_not_ready") and is_transient(err)
    assert agent.current() is None  # no certificate: 443 closed meanwhile (fail closed)
    served = tmp_path / "traefik" / agent_tls.TLS_FILE
    assert served.read_bytes().startswith(agent_tls.CLOSED_MARK)
    assert cloudflare_fake.count(SIGN) == 0

    cloudflare_fake.clear_faults()
    await service.start()  # what the start-up task retries with back-off
    assert await agent.check(signer(cp, worker, secret)) == agent_tls.CHECK_EVERY
    assert cloudflare_fake.count(SIGN) == 1


async def test_a_cloudflare_outage_while_signing_is_transient_and_keeps_the_served_cert(
    client: tuple[ControlPlane, ControlClient], cloudflare_fake: CloudflareFake, tmp_path: Path
) -> None:
    plane, cp = client
    worker, secret = await joined(plane, cp)
    await ready(cp, worker, secret)
    agent = agent_tls.OriginTls(tmp_path / "state", tmp_path / "traefik")
    await agent.check(signer(cp, worker, secret))
    served = (tmp_path / "traefik" / agent_tls.TLS_FILE).read_bytes()
    current = agent.current()
    assert current is not None

    # 70 days on: inside the renewal window, and Cloudflare is down.
    later = agent_tls.OriginTls(
        tmp_path / "state",
        tmp_path / "traefik",
        clock=lambda: current.not_after - 20 * agent_tls.DAY,
    )
    cloudflare_fake.outage(503, 10000, "Service Unavailable")
    err = await refused(later.check(signer(cp, worker, secret)))
    assert (err.status, err.code) == (503, "origin_tls_error") and is_transient(err)
    assert "Service Unavailable" in err.message
    assert (tmp_path / "traefik" / agent_tls.TLS_FILE).read_bytes() == served
    assert later.current() == current

    cloudflare_fake.clear_faults()
    assert await later.check(signer(cp, worker, secret)) == agent_tls.CHECK_EVERY
    renewed = later.current()
    # One call failed (a create is not repeated after a 5xx: the agent retries), one signed.
    assert renewed is not None
    assert [c.status for c in cloudflare_fake.calls if c.endpoint == SIGN] == [200, 503, 200]
    assert (tmp_path / "traefik" / agent_tls.TLS_FILE).read_bytes() != served
    assert renewed.not_after == pytest.approx(
        datetime.now(UTC).timestamp() + 90 * agent_tls.DAY, abs=120
    )


async def test_no_certificate_while_cloudflare_is_still_deploying_the_pull_certificate(
    tls_plane: Start, cloudflare_fake: CloudflareFake, tmp_path: Path
) -> None:
    """A worker that required the client certificate before Cloudflare presents it would
    refuse every proxied request: workers wait until the upload is `active`."""
    cloudflare_fake.edge.aop_status = "pending_deployment"
    plane = await tls_plane()
    assert plane.app is not None
    service = plane.app[ORIGIN_TLS].service
    assert service is not None
    await until(lambda: asyncio.sleep(0, cloudflare_fake.edge.aop_certs), "the upload")
    with pytest.raises(OriginPullError, match="pending_deployment"):
        await service.start()
    cp = ControlClient(plane.url, timeout=10)
    try:
        worker, secret = await joined(plane, cp)
        assert (await cp.origin_tls_policy(worker, secret)).client_ca == ""
        agent = agent_tls.OriginTls(tmp_path / "state", tmp_path / "traefik")
        err = await refused(agent.check(signer(cp, worker, secret)))
        assert (err.status, err.code) == (503, "origin_tls_not_ready")

        for record in cloudflare_fake.edge.aop_certs.values():
            record["status"] = "active"  # Cloudflare finished deploying it
        await service.start()
        assert await agent.check(signer(cp, worker, secret)) == agent_tls.CHECK_EVERY
        assert len(cloudflare_fake.edge.aop_certs) == 1  # uploaded once, whoever retried
    finally:
        await cp.close()


async def test_an_unreadable_pull_pair_file_is_logged_and_retried(
    tls_plane: Start, cloudflare_fake: CloudflareFake, tmp_path: Path, caplog: Any
) -> None:
    """Not a start-up task dead in silence, with every worker refused for no stated reason."""
    (tmp_path / "origin-pull.json").write_text('{"certificate": "cut sh')
    with caplog.at_level(logging.ERROR, logger="control.api.origin_tls_routes"):
        plane = await tls_plane()
        await until(
            lambda: asyncio.sleep(0, "origin-pull.json" in caplog.text), "the error", timeout=10
        )
    assert f"{tmp_path / 'origin-pull.json'} is unreadable" in caplog.text
    assert "move it away" in caplog.text
    cp = ControlClient(plane.url, timeout=10)
    try:
        worker, secret = await joined(plane, cp)
        pem = csr(p256(), [WILDCARD])
        err = await refused(cp.origin_certificate(worker, secret, OriginCertRequest(csr=pem)))
        assert (err.status, err.code) == (503, "origin_tls_not_ready")
    finally:
        await cp.close()
    assert cloudflare_fake.count(UPLOAD) == 0


async def test_an_unreadable_ssl_mode_is_a_warning_and_workers_still_get_certificates(
    tls_plane: Start, cloudflare_fake: CloudflareFake, tmp_path: Path, caplog: Any
) -> None:
    """The SSL mode is checked, not depended on: a token without Zone Settings: Read
    (Cloudflare's real 403 envelope) costs a warning naming why, never the certificates."""
    cloudflare_fake.scopes -= {"zone_settings:read", "zone_settings:edit"}
    with caplog.at_level(logging.WARNING, logger="control.edge.tls_origin"):
        plane = await tls_plane()
        cp = ControlClient(plane.url, timeout=10)
        try:
            worker, secret = await joined(plane, cp)
            await ready(cp, worker, secret)
            agent = agent_tls.OriginTls(tmp_path / "state", tmp_path / "traefik")
            assert await agent.check(signer(cp, worker, secret)) == agent_tls.CHECK_EVERY
        finally:
            await cp.close()
    assert agent.current() is not None
    assert (
        "Cloudflare SSL mode of the zone could not be read (CLOUDFLARE_API_TOKEN lacks "
        "Zone Settings: Read on this zone: Cloudflare read the zone's SSL mode: HTTP 403, "
        "code 10000: Authentication error); origin TLS is set up all the same" in caplog.text
    )
    (read,) = [
        c for c in cloudflare_fake.calls if c.endpoint == "GET /zones/{zone_id}/settings/ssl"
    ]
    assert read.status == 403
