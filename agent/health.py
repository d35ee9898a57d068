"""Health probes from the host, not Docker HEALTHCHECKs.

Contract: a container is healthy when `GET http://127.0.0.1:<published port><path>`
answers 2xx within the probe timeout. `classify` turns a probe result and the
container's age into the reported health word; `wait_healthy` is the upgrade gate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime

import aiohttp

from shared.protocol import HealthSpec


async def probe(
    session: aiohttp.ClientSession,
    port: int,
    path: str,
    probe_timeout: float,
    headers: Mapping[str, str] | None = None,
) -> bool:
    url = f"http://127.0.0.1:{port}{path if path.startswith('/') else '/' + path}"
    try:
        async with session.get(
            url,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=probe_timeout),
            allow_redirects=False,
        ) as resp:
            return 200 <= resp.status < 300
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


async def wait_healthy(
    session: aiohttp.ClientSession,
    port: int,
    path: str,
    *,
    gate: float,
    probe_timeout: float,
    interval: float = 0.5,
    headers: Mapping[str, str] | None = None,
) -> bool:
    deadline = time.monotonic() + gate
    while True:
        if await probe(session, port, path, probe_timeout, headers):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


def seconds_since(started_at: str, now: datetime | None = None) -> float | None:
    """Age of a Docker RFC 3339 timestamp (nanosecond precision trimmed)."""
    if not started_at or started_at.startswith("0001-"):
        return None
    text = started_at.rstrip("Z")
    if "." in text:
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:6]}"
    try:
        moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError:
        return None
    return ((now or datetime.now(UTC)) - moment).total_seconds()


def classify(running: bool, probed_ok: bool, age: float | None, gate: float) -> str:
    if not running:
        return "none"
    if probed_ok:
        return "healthy"
    if age is not None and age < gate:
        return "starting"
    return "unhealthy"


def gate_for(spec: HealthSpec, default: float) -> float:
    """Seconds a tenant may take to get healthy: its profile's own allowance when it
    states one (the real gateway needs longer than a stand-in), else HEALTH_GATE."""
    return float(spec.start_seconds) if spec.start_seconds else default
