"""Sign-in through a real Traefik: the reconciler writes a gated route for a spec with a
sign-in key, the verifier answers Traefik's forward auth, and a busybox container that
logs every request line and echoes the identity header shows what reached it. The same
spec carries a config and a secret file, checked in its real volume."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import docker
import pytest
from msgspec.structs import replace

from agent.metadata_block import MetadataBlock
from agent.ownership import Owner
from agent.reconcile import Reconciler
from agent.reconcile_steps import ReconcilerOptions
from agent.runtime import DockerRuntime
from agent.traefik import RouteOptions
from agent.verifier import Verifier, serve
from shared import signin
from shared.protocol import Assignments, ConfigFileSpec, SecretFileSpec
from tests.agent import images
from tests.agent.conftest import new_user, purge_user
from tests.agent.specs import make_spec
from tests.agent.test_e2e import free_port, until

pytestmark = pytest.mark.docker
ECHO = "clawfleet-test/agent:echo"
HEADER = "X-Clawfleet-User"


@pytest.fixture(scope="module")
def echo_image() -> Iterator[str]:
    client = docker.from_env(version="auto", timeout=60)
    yield images.build_echo(client, ECHO)
    client.close()


@dataclass
class Stack:
    url: str
    user: str
    host: str
    key: str
    container: docker.models.containers.Container
    http: aiohttp.ClientSession

    async def get(self, path: str, **headers: str) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.http.get(
            self.url + path, headers={"Host": self.host, **headers}, allow_redirects=False
        ) as r:
            return r.status, await r.text(), r

    def reached(self, marker: str) -> bool:
        self.container.reload()
        return marker in self.container.logs().decode(errors="replace")


@pytest.fixture
async def stack(tmp_path: Path, echo_image: str) -> AsyncIterator[Stack]:
    user = new_user()
    host = f"{user}.clawfleet.test"
    key = signin.signin_key(f"gw-{uuid.uuid4().hex}")
    spec = replace(
        make_spec(user, ECHO, route_host=host),
        signin_key=key,
        identity_header=HEADER,
        config_files=[
            ConfigFileSpec(
                f"clawfleet-{user}-state",
                "openclaw.json",
                seed='{"agents": {"defaults": {}}}',
                owned='{"gateway": {"trustedProxies": ["{{network_gateway}}"]}}',
            )
        ],
        secret_files=[SecretFileSpec(f"clawfleet-{user}-state", "secrets.json", '{"k": "sk-x"}')],
    )
    dyn, port, auth_port = tmp_path / "traefik", free_port(), free_port()
    dyn.mkdir()
    verifier = Verifier()
    runner = await serve(verifier, auth_port)
    rec = Reconciler(
        DockerRuntime(None, timeout=60),
        MetadataBlock(["iptables"]),
        ReconcilerOptions(
            health_gate=8,
            stop_grace=1,
            traefik_dir=dyn,
            route_options=RouteOptions(("web",), tls=False, auth_port=auth_port),
        ),
        Owner(f"srv-{uuid.uuid4().hex[:12]}"),
    )
    rec.on_specs = verifier.set_specs  # as the daemon wires it
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "traefik"),
            f"--entrypoints.web.address=127.0.0.1:{port}",
            f"--providers.file.directory={dyn}",
            "--providers.file.watch=true",
        ],
        stdout=(tmp_path / "traefik.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    client = docker.from_env(version="auto", timeout=60)
    try:
        await rec.reconcile(Assignments(generation=1, containers=[spec]))
        assert rec.errors == {}
        [container] = client.containers.list(filters={"label": f"clawfleet.user={user}"})
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            yield Stack(f"http://127.0.0.1:{port}", user, host, key, container, http)
    finally:
        proc.terminate()
        proc.wait(10)
        await rec.close()
        rec.runtime.close()
        await runner.cleanup()
        purge_user(client, user)
        client.close()


async def routed(stack: Stack) -> None:
    async def gate_answers() -> bool:
        try:
            return (await stack.get("/healthz"))[0] == 401
        except aiohttp.ClientError:
            return False

    await until(gate_answers, "Traefik to load the gated route", timeout=30)


async def signed_in_cookie(stack: Stack) -> str:
    ticket = signin.make_ticket(stack.key, stack.user, int(time.time()) + 60, signin.new_nonce())
    status, _, response = await stack.get(f"/_clawfleet/signin?ticket={ticket}")
    assert status == 303, status
    assert "domain=" not in response.headers["Set-Cookie"].lower()
    return f"{signin.COOKIE}={response.cookies[signin.COOKIE].value}"


async def test_unauthenticated_requests_never_reach_the_container(stack: Stack) -> None:
    await routed(stack)
    status, body, _ = await stack.get("/unauth-probe-1", **{HEADER: stack.user})
    assert status == 401 and "sign-in link" in body
    other = signin.make_session(
        signin.signin_key("another-tenant"), stack.user, int(time.time()) + 60, "0" * 32
    )
    status, _, _ = await stack.get("/unauth-probe-2", Cookie=f"{signin.COOKIE}={other}")
    assert status == 401
    # Proves the probe would have been seen: a signed-in request to the same kind of path is.
    cookie = await signed_in_cookie(stack)
    assert (await stack.get("/signed-probe", Cookie=cookie))[0] == 404  # busybox's own 404
    await until(lambda: asyncio.sleep(0, stack.reached("/signed-probe")), "the signed-in probe")
    assert not stack.reached("unauth-probe")


async def test_signed_in_request_gets_the_identity_header_never_a_forged_one(stack: Stack) -> None:
    await routed(stack)
    cookie = await signed_in_cookie(stack)
    status, body, _ = await stack.get("/cgi-bin/whoami", Cookie=cookie)
    assert (status, body) == (200, f"user={stack.user}\n")
    forged = {HEADER: "mallory", HEADER.lower(): "mallory"}
    status, body, _ = await stack.get("/cgi-bin/whoami", Cookie=cookie, **forged)
    assert (status, body) == (200, f"user={stack.user}\n")


async def test_config_and_secret_files_are_in_the_volume(
    stack: Stack, dclient: docker.DockerClient
) -> None:
    volume = dclient.volumes.get(f"clawfleet-{stack.user}-state")
    root = Path(volume.attrs["Mountpoint"])
    network = dclient.networks.get(f"clawfleet-{stack.user}")
    gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
    config = json.loads((root / "openclaw.json").read_text())
    assert config == {"agents": {"defaults": {}}, "gateway": {"trustedProxies": [gateway]}}
    for name in ("openclaw.json", "secrets.json"):
        info = (root / name).stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (1000, 1000, 0o600)
    assert json.loads((root / "secrets.json").read_text()) == {"k": "sk-x"}
