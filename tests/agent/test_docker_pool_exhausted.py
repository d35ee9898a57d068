"""Docker answers a network create with 404 when its address pools are used up (the
message below is the engine's). The agent must turn that into the user's error, not let
it escape as "not found" and stop its loop. The engine here is a local HTTP server that
answers the Docker API's wire format for the calls made."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from agent.docker_objects import DockerError
from agent.ownership import Owner
from agent.runtime import DockerRuntime
from tests.fixtures import free_port

POOLS_USED_UP = (
    "could not find an available, non-overlapping IPv4 address pool among the defaults "
    "to assign to the network"
)


@pytest.fixture
async def engine() -> AsyncIterator[str]:
    async def version(_: web.Request) -> web.Response:
        return web.json_response({"ApiVersion": "1.41", "Version": "20.10.24"})

    async def networks(_: web.Request) -> web.Response:
        return web.json_response([])

    async def create(_: web.Request) -> web.Response:
        return web.json_response({"message": POOLS_USED_UP}, status=404)

    app = web.Application()
    app.router.add_get("/version", version)
    app.router.add_get("/v1.41/networks", networks)
    app.router.add_post("/v1.41/networks/create", create)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"tcp://127.0.0.1:{port}"
    await runner.cleanup()


async def test_used_up_address_pools_are_the_users_error(engine: str) -> None:
    runtime = DockerRuntime(engine, timeout=10)
    try:
        with pytest.raises(DockerError, match="network clawfleet-alice: could not find"):
            await runtime.ensure_network("alice", Owner("srv-test1234"))
    finally:
        runtime.close()
