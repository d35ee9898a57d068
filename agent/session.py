"""One aiohttp session per holder, made on first use and closed once.

Contract: `LazySession.get()` returns the same `aiohttp.ClientSession` until `close()`;
the session is made on the first `get()` (a ClientSession must be made inside the
running event loop, and a holder that never talks HTTP never opens one). `close()`
closes it if it was made, and a later `get()` makes a new one.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp


class LazySession:
    def __init__(self, *, limit: int, headers: Mapping[str, str] | None = None) -> None:
        self._limit = limit  # connections at once: the pool of one session
        self._headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit), headers=self._headers
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
