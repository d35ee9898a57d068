"""One blocking hcloud call, run off the event loop within the project's rate budget: the
wrapper both Hetzner clients use (servers and volumes, control/capacity/providers/
hetzner.py; the edge firewall, control/edge/firewall_hcloud.py).

Contract: `call(budget, executor, seconds, fn, what)` waits for the budget (at most
max(seconds, BUDGET_WAIT) seconds, else ProviderError `rate_limited` at once), runs `fn`
on one of the executor's threads, where hcloud's failures become ProviderError
(control/capacity/providers/hetzner_errors.py) with the status and headers the budget's
response hook saw, and gives up after `seconds` (ProviderError, transient,
`timeout`: the thread may still be waiting on its socket, hcloud's own request timeout
frees it, and the call itself may still take effect). A refusal (429) and the reply's
rate-limit headers are recorded in the budget.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import requests
from hcloud import APIException

from control.capacity.providers.base import ProviderError
from control.capacity.providers.hetzner_errors import api_error, request_error
from control.capacity.providers.hetzner_ratelimit import RateBudget

T = TypeVar("T")
BUDGET_WAIT = 5.0  # seconds a call may wait for the rate-limit bucket before failing


async def call(
    budget: RateBudget,
    executor: ThreadPoolExecutor,
    seconds: float,
    fn: Callable[[], T],
    what: str,
) -> T:
    await budget.hold(what, max(seconds, BUDGET_WAIT))
    loop = asyncio.get_running_loop()
    job = functools.partial(_run, budget, seconds, fn, what)
    try:
        # Not asyncio.wait_for: on Python 3.11 it returns the result, swallowing the
        # caller's cancellation, when the call ends as the cancel arrives.
        async with asyncio.timeout(seconds):
            result = await loop.run_in_executor(executor, job)
    except ProviderError as exc:
        budget.refused(exc)
        raise
    except TimeoutError:
        raise ProviderError(
            f"Hetzner API: {what} did not answer within {seconds:g} s",
            kind="transient",
            code="timeout",
        ) from None
    budget.answered()
    return result


def _run(budget: RateBudget, timeout: float, fn: Callable[[], T], what: str) -> T:
    """On the worker thread, where the response hook leaves the failed reply's headers."""
    budget.start()
    try:
        return fn()
    except APIException as exc:
        raise api_error(exc, what, budget.reply()) from None
    except requests.RequestException as exc:
        raise request_error(exc, what, timeout) from None
