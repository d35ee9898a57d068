"""Fixtures that run the real control plane on 127.0.0.1 with a real SQLite file (under
--db=postgres, a fresh PostgreSQL database per test: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from control.app import ProviderFactory, create_app
from control.capacity.providers import build_provider
from control.settings import Settings, profiles
from tests.ports import free_port

# Under CLAWFLEET_TEST_DB=postgres (tests/conftest.py): a fresh PostgreSQL database's
# URL per test directory, so that a restart (make_settings again) finds the same one.
postgres_database: Callable[[Path], str] | None = None
ADMIN_TOKEN = "test-admin-token-" + "a" * 24
INTERNAL_SECRET = "test-internal-secret-" + "b" * 24


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    port = overrides.pop("listen_port", None) or free_port()
    base = Settings(
        admin_token=ADMIN_TOKEN,
        internal_secret=INTERNAL_SECRET,
        database_path=str(tmp_path / "clawfleet.db"),
        database_url=postgres_database(tmp_path) if postgres_database else "",
        listen_host="127.0.0.1",
        listen_port=port,
        public_url=f"http://127.0.0.1:{port}",
        local_workers_dir=str(tmp_path / "workers"),
        local_router_address="",
        # No autoscaling unless a test asks for it: workers come from the test itself.
        max_servers=0,
        warm_headroom=0,
        # Busybox stand-ins: no command, config or sign-in gate (OpenClaw tests override).
        tenant_profile=profiles.load("generic"),
    )
    return base.with_overrides(**overrides)


class ControlPlane:
    """The real app served by aiohttp's AppRunner; stop() and start() keep the same
    database file and port, as a process restart would."""

    def __init__(
        self, settings: Settings, provider_factory: ProviderFactory = build_provider
    ) -> None:
        self.settings = settings
        self.provider_factory = provider_factory
        self.admin_token = settings.admin_token
        self.url = f"http://127.0.0.1:{settings.listen_port}"
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.app = create_app(self.settings, self.provider_factory)
        self._runner = web.AppRunner(self.app, shutdown_timeout=5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.settings.listen_port, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def close(self) -> None:
        await self.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def admin(
        self, method: str, path: str, json: Any = None, token: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token or self.admin_token}"}
        async with self.session.request(method, self.url + path, json=json, headers=headers) as r:
            body = await r.json() if r.content_type == "application/json" else {}
            return r.status, body


class PlaneFactory:
    """Makes control planes on one test's database; `close_all` stops every one of them
    (safe to call twice), so a fixture that must outlive them can stop them first."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.made: list[ControlPlane] = []

    def __call__(
        self, provider_factory: ProviderFactory = build_provider, **overrides: Any
    ) -> ControlPlane:
        plane = ControlPlane(make_settings(self.tmp_path, **overrides), provider_factory)
        self.made.append(plane)
        return plane

    async def close_all(self) -> None:
        for plane in self.made:
            await plane.close()


@pytest.fixture
async def control_factory(tmp_path: Path) -> AsyncIterator[PlaneFactory]:
    factory = PlaneFactory(tmp_path)
    yield factory
    await factory.close_all()


@pytest.fixture
async def control(control_factory: Callable[..., ControlPlane]) -> ControlPlane:
    plane = control_factory()
    await plane.start()
    return plane
