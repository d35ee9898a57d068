"""The real hcloud client against the fake Hetzner API, for tests of the fake's resources.

hcloud is synchronous: `run` calls it in a thread so the fake keeps serving on the test's
loop. The `client` fixture (import `hcloud_client_fixture` with `# noqa: F401`, like
`hetzner_fake_fixture`) does not retry, so every error shows as the first call got it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest
from hcloud import APIException, Client

from tests.fakes.hetzner import HetznerFake

T = TypeVar("T")


def some(value: T | None) -> T:
    """The value hcloud types as optional but the API always sends here."""
    assert value is not None
    return value


@pytest.fixture(name="client")
async def hcloud_client_fixture(hetzner_fake: HetznerFake) -> AsyncIterator[Client]:
    api = Client(token=hetzner_fake.token, api_endpoint=hetzner_fake.url, poll_interval=0.01)
    api._client._retry_max_retries = 0  # show every error as the first call got it
    yield api


async def run(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(call, *args, **kwargs)


async def api_error(call: Callable[..., Any], *args: Any, **kwargs: Any) -> APIException:
    with pytest.raises(APIException) as info:
        await run(call, *args, **kwargs)
    return info.value
