"""An event loop on a thread of its own, for a connection the main loop must not serve.

Contract: `start()` starts the thread and its loop (once; a second call does nothing).
`run(make)` is awaited on another loop: `make()`'s coroutine runs on this one, in the
caller's context (its log lines keep the request's id), and its result or exception is
the caller's; cancelling the caller cancels it. `stop()` stops the loop and joins the
thread; it is safe to call twice. Whatever the coroutines open on this loop they close
on it, before `stop()`.

Why (issue 16): PostgreSQL's write transaction is several trips to the server under a
lock every replica waits for. On the main loop, each trip's answer waited its turn
behind the HTTP requests that loop was serving, and the lock was held that long.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._loop is not None:
            return
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=self._name, daemon=True)
        self._thread.start()

    async def run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        if self._loop is None:
            raise RuntimeError("store is not open")
        future = asyncio.run_coroutine_threadsafe(
            _in_context(contextvars.copy_context(), make), self._loop
        )
        return await asyncio.wrap_future(future)

    async def stop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)
        loop.close()


async def _in_context(
    context: contextvars.Context, make: Callable[[], Coroutine[Any, Any, T]]
) -> T:
    # A task copies the context it is created in: created inside `context.run`, it
    # runs in (a copy of) the caller's.
    return await context.run(asyncio.ensure_future, make())
