"""The agent daemon's origin TLS loop against the real control plane (issue 14): the
in-process `Daemon` with the agent's real client, state and Traefik file, talking over
HTTP to a control plane whose Cloudflare (the fake API, a real CA) signs.

Docker is pointed at a socket that does not exist and iptables at `true`: origin TLS
must not depend on either, and the test touches neither the shared engine nor the
host's firewall. The daemon's reconcile loop logs Docker's absence and goes on.

- A daemon with no certificate obtains one, writes Traefik's file (0640, group
  TRAEFIK_GROUP), reports its expiry in its heartbeat, and GET /v1/servers/{id} shows it.
- Restarted, it re-serves the saved certificate before anything answers and asks for
  no new one.
- With a saved certificate inside the renewal window, it renews at start.
- Until the control plane has set up origin pulls (503), it retries with back-off and
  keeps beating, and Traefik's file is the closed one (every handshake refused); once
  they are set up, it gets its certificate.
- With origin TLS off at the control plane, the closed file is removed and a restart
  writes none; with plain HTTP routers (TRAEFIK_TLS=false) none is ever written.
- A Cloudflare outage while signing (503 `origin_tls_error`) is retried the same way
  until it ends."""

from __future__ import annotations

import asyncio
import grp
import os
import stat
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from agent import origin_tls as agent_tls
from agent.client import ControlPlaneError
from agent.config import load_settings
from agent.daemon import Daemon
from agent.registration import EXIT_CONFIG
from control.appkeys import ORIGIN_TLS
from tests.agent.test_e2e import until
from tests.fakes.cloudflare import CloudflareFake
from tests.fixtures import ControlPlane
from tests.origin_tls_plane import WILDCARD, Start, tls_plane_fixture  # noqa: F401
from tests.ports import free_port
from tests.test_protocol import token

SIGN = "POST /certificates"
UPLOAD = "POST /zones/{zone_id}/origin_tls_client_auth"
GROUP = grp.getgrgid(os.getgid()).gr_name  # a group that exists, as clawfleet-traefik does


class Checks:
    """Records each origin TLS check the daemon makes (the real one runs) and lets a test
    await a condition on them instead of sleeping."""

    def __init__(self, daemon: Daemon) -> None:
        self.outcomes: list[str] = []
        self._changed = asyncio.Condition()
        real = daemon.origin_tls.check

        async def check(signer: agent_tls.Signer) -> float:
            try:
                delay = await real(signer)
            except ControlPlaneError as err:
                await self._record(f"{err.status} {err.code}")
                raise
            await self._record("ok")
            return delay

        daemon.origin_tls.check = check  # type: ignore[method-assign]

    async def _record(self, outcome: str) -> None:
        async with self._changed:
            self.outcomes.append(outcome)
            self._changed.notify_all()

    async def until(self, done: Callable[[list[str]], bool], timeout: float = 20) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: done(self.outcomes)), timeout)


class Daemons:
    """In-process daemons sharing one STATE_DIR and TRAEFIK_DYNAMIC_DIR, as one worker's
    agent restarted; each is stopped as SIGTERM would (exit 0), at the latest at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.running: dict[Daemon, asyncio.Task[int]] = {}

    async def start(
        self, plane: ControlPlane, bootstrap: bool = True, **more: str
    ) -> tuple[Daemon, Checks]:
        env = more | {
            "CONTROL_URL": plane.url,
            "STATE_DIR": str(self.tmp_path / "state"),
            "TRAEFIK_DYNAMIC_DIR": str(self.tmp_path / "traefik"),
            "TRAEFIK_GROUP": GROUP,
            "DOCKER_HOST": f"unix://{self.tmp_path}/no-docker.sock",
            "IPTABLES": "true",
            "AUTH_PORT": str(free_port()),
            "POLL_WAIT": "1",
            "RECONCILE_INTERVAL": "5",
            "BACKOFF_BASE": "0.05",
            "BACKOFF_MAX": "0.3",
            "REQUEST_TIMEOUT": "5",
        }
        if bootstrap:
            env["BOOTSTRAP_TOKEN"] = await token(plane)
        daemon = Daemon(load_settings(env))
        checks = Checks(daemon)
        self.running[daemon] = asyncio.create_task(daemon.run())
        return daemon, checks

    async def stop(self, daemon: Daemon) -> None:
        task = self.running.pop(daemon)
        daemon.stop()
        assert await asyncio.wait_for(task, 20) == 0


@pytest.fixture
async def daemons(tmp_path: Path) -> AsyncIterator[Daemons]:
    made = Daemons(tmp_path)
    yield made
    for daemon in list(made.running):
        await made.stop(daemon)


def expiry_shown(plane: ControlPlane, worker: str) -> Callable[[], Any]:
    async def shown() -> float | None:
        status, body = await plane.admin("GET", f"/v1/servers/{worker}")
        assert status == 200, body
        value = body["origin_cert_expires"]
        return float(value) if value is not None else None

    return shown


def served(tmp_path: Path) -> Path:
    return tmp_path / "traefik" / agent_tls.TLS_FILE


def closed(tmp_path: Path) -> bool:
    return served(tmp_path).read_bytes().startswith(agent_tls.CLOSED_MARK)


def saved_cert(tmp_path: Path) -> x509.Certificate:
    path = tmp_path / "state" / agent_tls.DIRECTORY / agent_tls.CERT_FILE
    return x509.load_pem_x509_certificate(path.read_bytes())


async def test_the_daemon_obtains_reports_and_keeps_its_certificate(
    tls_plane: Start, daemons: Daemons, cloudflare_fake: CloudflareFake, tmp_path: Path
) -> None:
    plane = await tls_plane()
    daemon, checks = await daemons.start(plane)
    await checks.until(lambda o: "ok" in o)
    assert daemon.creds is not None
    worker = daemon.creds.worker_id
    cert = saved_cert(tmp_path)
    expires = cert.not_valid_after_utc.timestamp()
    assert await until(expiry_shown(plane, worker), "the heartbeat's expiry shown") == expires
    mode = served(tmp_path).stat()
    assert stat.S_IMODE(mode.st_mode) == 0o640 and mode.st_gid == os.getgid()
    text = served(tmp_path).read_text()
    assert cert.public_bytes(serialization.Encoding.PEM).decode() in text.replace("\\n", "\n")
    assert cloudflare_fake.count(SIGN) == 1

    # A restart: Traefik's file is re-written from the saved certificate at once (here
    # it was lost), and the first check finds it current: nothing is signed again.
    await daemons.stop(daemon)
    before = served(tmp_path).read_bytes()
    served(tmp_path).unlink()
    again, checks = await daemons.start(plane, bootstrap=False)
    await checks.until(lambda o: o == ["ok"])
    assert served(tmp_path).read_bytes() == before
    assert cloudflare_fake.count(SIGN) == 1
    assert again.origin_tls.expires_at() == expires


def inside_the_window(
    fake: CloudflareFake, state: Path, client_ca: str, days_left: float
) -> datetime:
    """A certificate saved by an earlier run, signed by the same Origin CA 80 days ago."""
    ca = fake.edge.ca("origin-ecc")
    key = agent_tls.new_key()
    not_after = datetime.now(UTC).replace(microsecond=0) + timedelta(days=days_left)
    cert = (
        x509.CertificateBuilder()
        .subject_name(ca.cert.subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - timedelta(days=90))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(WILDCARD)]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    directory = state / agent_tls.DIRECTORY
    directory.mkdir(parents=True)
    (directory / agent_tls.KEY_FILE).write_bytes(agent_tls.key_pem(key))
    (directory / agent_tls.CERT_FILE).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / agent_tls.CA_FILE).write_text(client_ca)
    return not_after


async def test_a_certificate_inside_the_renewal_window_is_renewed_at_start(
    tls_plane: Start, daemons: Daemons, cloudflare_fake: CloudflareFake, tmp_path: Path
) -> None:
    plane = await tls_plane()
    await until(lambda: asyncio.sleep(0, cloudflare_fake.edge.aop_client_pair()), "origin pulls")
    pair = cloudflare_fake.edge.aop_client_pair()
    assert pair is not None
    old = inside_the_window(cloudflare_fake, tmp_path / "state", pair[0], days_left=10)
    assert agent_tls.renewal_reason(
        agent_tls.cert_info(
            (tmp_path / "state" / agent_tls.DIRECTORY / agent_tls.CERT_FILE).read_bytes()
        ),
        [WILDCARD],
        datetime.now(UTC).timestamp(),
    ) == ("expires soon")
    daemon, checks = await daemons.start(plane)
    await checks.until(lambda o: "ok" in o)
    assert cloudflare_fake.count(SIGN) == 1
    renewed = saved_cert(tmp_path).not_valid_after_utc
    assert renewed > old + timedelta(days=70)
    assert daemon.creds is not None
    shown = expiry_shown(plane, daemon.creds.worker_id)

    async def renewal_reported() -> bool:
        # A beat before the renewal reports the old certificate, which was served then.
        return await shown() == renewed.timestamp()

    await until(renewal_reported, "the renewed expiry reported")


async def test_the_daemon_waits_for_origin_pulls_and_keeps_beating(
    tls_plane: Start, daemons: Daemons, cloudflare_fake: CloudflareFake, tmp_path: Path
) -> None:
    cloudflare_fake.inject(UPLOAD, 500, 10000, "upstream down", times=1000)
    plane = await tls_plane()
    daemon, checks = await daemons.start(plane)
    await checks.until(lambda o: o.count("503 origin_tls_not_ready") >= 3)
    assert daemon.creds is not None
    worker = daemon.creds.worker_id

    async def beating() -> bool:
        status, body = await plane.admin("GET", f"/v1/servers/{worker}")
        return status == 200 and body["last_heartbeat_age"] is not None

    await until(beating, "heartbeats while origin TLS waits")
    assert closed(tmp_path) and cloudflare_fake.count(SIGN) == 0
    assert await expiry_shown(plane, worker)() is None

    cloudflare_fake.clear_faults()
    assert plane.app is not None and plane.app[ORIGIN_TLS].service is not None
    await plane.app[ORIGIN_TLS].service.start()  # what the start-up task retries
    await checks.until(lambda o: o[-1] == "ok")
    assert not closed(tmp_path) and cloudflare_fake.count(SIGN) == 1
    await until(expiry_shown(plane, worker), "the expiry shown")


async def test_a_cloudflare_outage_while_signing_is_retried_until_it_ends(
    tls_plane: Start, daemons: Daemons, cloudflare_fake: CloudflareFake, tmp_path: Path
) -> None:
    plane = await tls_plane()
    assert plane.app is not None
    service = plane.app[ORIGIN_TLS].service
    assert service is not None
    await until(lambda: asyncio.sleep(0, service.policy().client_ca), "origin pulls set up")
    cloudflare_fake.outage(503, 10000, "Service Unavailable")
    daemon, checks = await daemons.start(plane)
    await checks.until(lambda o: o.count("503 origin_tls_error") >= 3)
    assert closed(tmp_path) and daemon.origin_tls.expires_at() is None
    cloudflare_fake.clear_faults()
    await checks.until(lambda o: o[-1] == "ok")
    assert not closed(tmp_path)
    assert [c.status for c in cloudflare_fake.calls if c.endpoint == SIGN][-1] == 200


async def test_origin_tls_off_leaves_no_closed_file(
    tls_plane: Start, daemons: Daemons, tmp_path: Path
) -> None:
    """Without Cloudflare DNS the control plane signs nothing: a worker must not stay
    closed, then or at its next start (before the control plane answers)."""
    plane = await tls_plane(dns_provider="none")
    daemon, checks = await daemons.start(plane)
    await checks.until(lambda o: "ok" in o)
    assert not served(tmp_path).exists()
    await daemons.stop(daemon)
    assert daemon.origin_tls.prepare() == "none" and not served(tmp_path).exists()


async def test_origin_tls_turned_on_after_off_closes_443_before_signing(
    tls_plane: Start, daemons: Daemons, cloudflare_fake: CloudflareFake, tmp_path: Path
) -> None:
    """A worker that last heard "off" starts with no TLS file; once the control plane has
    hostnames for it (origin TLS turned on), 443 is closed at once, not only once a
    certificate is signed (here Cloudflare is down, so none is)."""
    (tmp_path / "state" / agent_tls.DIRECTORY).mkdir(parents=True)
    (tmp_path / "state" / agent_tls.DIRECTORY / agent_tls.OFF_FILE).touch()
    plane = await tls_plane()
    assert plane.app is not None
    service = plane.app[ORIGIN_TLS].service
    assert service is not None
    await until(lambda: asyncio.sleep(0, service.policy().client_ca), "origin pulls set up")
    cloudflare_fake.outage(503, 10000, "Service Unavailable")
    daemon, checks = await daemons.start(plane)
    await checks.until(lambda o: o.count("503 origin_tls_error") >= 2)
    assert closed(tmp_path) and daemon.origin_tls.expires_at() is None
    assert not (tmp_path / "state" / agent_tls.DIRECTORY / agent_tls.OFF_FILE).exists()


async def test_an_unwritable_tls_file_stops_the_agent(tmp_path: Path) -> None:
    """Routes served on 443 with no TLS options would take any client: the agent does
    not start rather than serve them (systemd restarts it)."""
    env = {
        "CONTROL_URL": "http://127.0.0.1:9",
        "BOOTSTRAP_TOKEN": "abcdef.0123456789abcdefghijklmnopqrstuvwxyz",
        "STATE_DIR": str(tmp_path / "state"),
        "TRAEFIK_DYNAMIC_DIR": str(tmp_path / "traefik"),
    }
    (tmp_path / "traefik").write_text("a file where the directory should be")
    daemon = Daemon(load_settings(env))
    try:
        async with asyncio.timeout(30):  # a regression runs on, trying to register
            assert await daemon.run() == EXIT_CONFIG
    finally:
        daemon.stop()


@pytest.mark.parametrize(("routers_tls", "written"), [("false", False), ("true", True)])
def test_plain_http_routers_get_no_closed_file(
    tmp_path: Path, routers_tls: str, written: bool
) -> None:
    """The local provider's demo (TRAEFIK_TLS=false): TLS options would reach no router."""
    env = {
        "CONTROL_URL": "http://127.0.0.1:9",
        "BOOTSTRAP_TOKEN": "abcdef.0123456789abcdefghijklmnopqrstuvwxyz",
        "STATE_DIR": str(tmp_path / "state"),
        "TRAEFIK_DYNAMIC_DIR": str(tmp_path / "traefik"),
        "TRAEFIK_TLS": routers_tls,
    }
    Daemon(load_settings(env))._prepare_origin_tls()  # what run() does before any loop
    assert served(tmp_path).exists() is written
    assert not written or closed(tmp_path)
