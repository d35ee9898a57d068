"""The control plane tunes the garbage collector once start-up is done (issue 16):
what start-up built is frozen (never walked by a collection again) and the thresholds
are the measured ones (docs/benchmarks.md, "Garbage collection")."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from control import __main__ as control_main

SEEN = web.AppKey("seen", list)


@pytest.fixture
def collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


async def _resource(app: web.Application) -> AsyncIterator[None]:
    app[SEEN].append(gc.get_freeze_count())  # a start-up context, like the store's
    yield


async def test_start_up_objects_are_frozen_after_every_context_started(collector: None) -> None:
    app = web.Application()
    app[SEEN] = []
    app.cleanup_ctx.append(_resource)
    control_main.tune_collector(app)
    runner = web.AppRunner(app)
    await runner.setup()  # runs the start-up hooks
    try:
        assert app[SEEN] == [0]  # not frozen yet while the contexts start
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == control_main.GC_THRESHOLDS
    finally:
        await runner.cleanup()


def test_the_thresholds_are_the_measured_ones() -> None:
    # Young collections every 50k net allocations, not 700, and an older generation
    # rarely: each walks every held long-poll (docs/benchmarks.md).
    young, older, _ = control_main.GC_THRESHOLDS
    assert young >= 10_000 and older >= 100
    assert control_main.GC_FREEZE


# Run apart: this test process may have loaded them already (the PostgreSQL tests).
_STARTED_ON_SQLITE = """
import asyncio, sys, tempfile
from pathlib import Path
from aiohttp import web
from control.app import create_app
from tests.fixtures import make_settings

async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        runner = web.AppRunner(create_app(make_settings(Path(tmp), database_url="")))
        await runner.setup()
        try:
            print(sorted(m for m in ("psycopg", "sqlglot") if m in sys.modules))
        finally:
            await runner.cleanup()

asyncio.run(main())
"""


def test_a_plane_on_sqlite_never_loads_postgresql_modules() -> None:
    # About 25,000 objects and 20 MB that every collection would walk for nothing
    # (docs/benchmarks.md).
    root = Path(__file__).parent.parent
    done = subprocess.run(
        [sys.executable, "-c", _STARTED_ON_SQLITE],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
