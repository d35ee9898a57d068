"""The aiohttp application factory.

Contract: `create_app(settings)` builds the whole control plane and nothing runs
until the app starts. One cleanup context owns every long-lived resource: it opens
the store, starts the background loops, and on shutdown wakes long-polls, cancels
and awaits the loops, and closes the store, in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from control import middleware
from control.fleet import FLEET, Fleet
from control.keyring import Keyring
from control.routes import routes
from control.settings import Settings
from control.store import Store

SETTINGS = web.AppKey("settings", Settings)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[
            middleware.errors,
            middleware.body_limit,
            middleware.admin_auth(settings.admin_token),
        ],
        client_max_size=middleware.MAX_BODY,
    )
    app[SETTINGS] = settings
    app.add_routes(routes)
    app.cleanup_ctx.append(_fleet_context)
    app.on_shutdown.append(_wake_long_polls)
    return app


async def _fleet_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = Store(settings.database_path)
    await store.open()
    fleet = Fleet(settings, store, Keyring(settings.internal_secret))
    sweeper: asyncio.Task[None] | None = None
    try:
        await fleet.start()
        app[FLEET] = fleet
        sweeper = asyncio.create_task(fleet.run_sweeps(), name="liveness-sweeps")
        yield
    finally:
        fleet.board.close()
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        await store.close()


async def _wake_long_polls(app: web.Application) -> None:
    if FLEET in app:
        app[FLEET].board.close()
