"""One root exception per program: every exception class the control plane defines is a
`ClawfleetError` and every one the agent defines is an `AgentError`, so a handler of the
root takes every deliberate failure; integrations' errors carry the upstream's word."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from typing import Any

import pytest

import agent
import control
from agent.client import ControlPlaneError
from agent.errors import AgentError
from control.capacity.providers.base import ProviderError
from control.dns.provider import DnsError
from control.errors import ClawfleetError, IntegrationError
from shared.errors import CodedError

ROOT = Path(__file__).resolve().parent.parent


def _exception_classes(package: object) -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):  # type: ignore[attr-defined]
        if info.name.endswith("__main__"):
            continue  # entry points parse argv when imported
        module = importlib.import_module(info.name)
        found.extend(
            obj
            for obj in vars(module).values()
            if inspect.isclass(obj)
            and issubclass(obj, BaseException)
            and obj.__module__ == module.__name__
        )
    return found


@pytest.mark.parametrize(
    ("package", "root"), [(control, ClawfleetError), (agent, AgentError)], ids=["control", "agent"]
)
def test_every_exception_class_has_the_programs_root(
    package: object, root: type[BaseException]
) -> None:
    classes = _exception_classes(package)
    assert len(classes) > 5  # the walk found the modules
    outside = sorted(f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, root))
    assert outside == []


def test_integration_errors_carry_code_message_and_correlation_id() -> None:
    provider = ProviderError(
        "boom", kind="transient", code="server_error", upstream_status=500, correlation_id="c1"
    )
    dns = DnsError("refused", upstream_code=10000, upstream_status=403, correlation_id="c2")
    for error in (provider, dns):
        assert isinstance(error, IntegrationError)
        assert error.status == 503  # what the error middleware would answer with
    assert (provider.code, provider.message, provider.correlation_id) == (
        "server_error",
        "boom",
        "c1",
    )
    assert (provider.upstream_status, dns.upstream_status, dns.upstream_code) == (500, 403, 10000)
    assert (dns.code, dns.correlation_id) == ("dns_error", "c2")
    assert str(provider) == "boom (code server_error, correlation id c1)"


def test_the_agents_control_plane_error_keeps_its_shape() -> None:
    err = ControlPlaneError(503, "service_unavailable", "database busy", "req-1")
    assert isinstance(err, AgentError)
    assert (err.status, err.code, err.message, err.correlation_id) == (
        503,
        "service_unavailable",
        "database busy",
        "req-1",
    )
    assert str(err) == "503 service_unavailable: database busy"


_BROAD = re.compile(r"^\s*except (Exception|BaseException)\b")
# control/app.py and control/api/ are their own review's (the error middleware's 500 path).
_ELSEWHERE = ("control/app.py", "control/api/")


def test_every_broad_except_says_why() -> None:
    """`except Exception` only where nothing narrower is meant, and then the code says
    why on that line or the next (a last-resort loop, a boundary that must answer)."""
    unexplained = []
    for package in ("control", "agent", "shared", "cloud_init"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            if rel.startswith(_ELSEWHERE):
                continue
            lines = path.read_text().splitlines()
            for number, line in enumerate(lines):
                if not _BROAD.match(line) or "BaseException" in line:
                    continue  # BaseException handlers here clean up and re-raise
                following = lines[number + 1] if number + 1 < len(lines) else ""
                if "#" not in line and not following.strip().startswith("#"):
                    unexplained.append(f"{rel}:{number + 1}")
    assert unexplained == []


async def test_the_agent_keeps_the_control_planes_request_id(aiohttp_server: Any) -> None:
    """A failed request's ControlPlaneError carries the X-Request-Id the control plane
    answered with, so an operator finds that request in the control plane's log."""
    from aiohttp import web

    from agent.client import ControlClient

    async def busy(request: web.Request) -> web.Response:
        body = {"error": {"code": "service_unavailable", "message": "database busy"}}
        return web.json_response(body, status=503, headers={"X-Request-Id": "req-42"})

    app = web.Application()
    app.router.add_get("/v1/agent/assignments", busy)
    server = await aiohttp_server(app)
    client = ControlClient(str(server.make_url("")).rstrip("/"))
    try:
        with pytest.raises(ControlPlaneError) as info:
            await client._request("GET", "/v1/agent/assignments", "key", "secret")
    finally:
        await client.close()
    assert (info.value.status, info.value.code, info.value.correlation_id) == (
        503,
        "service_unavailable",
        "req-42",
    )


@pytest.mark.parametrize("root", [ClawfleetError, AgentError])
def test_each_root_carries_code_message_and_correlation_id_from_the_shared_base(
    root: type[CodedError],
) -> None:
    plain, coded = root("plain"), root("coded", code="custom", correlation_id="r-9")
    assert (plain.code, plain.message, plain.correlation_id) == (root.code, "plain", None)
    assert (coded.code, coded.message, coded.correlation_id) == ("custom", "coded", "r-9")
    # One root per program: neither root catches the other program's errors.
    other = AgentError if root is ClawfleetError else ClawfleetError
    assert not issubclass(root, other) and not issubclass(other, root)
