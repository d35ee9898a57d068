"""The control plane tunes the garbage collector once start-up is done (issue 16):
what start-up built is frozen (never walked by a collection again) and the thresholds
are the measured ones (docs/benchmarks.md, "Garbage collection")."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator

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
