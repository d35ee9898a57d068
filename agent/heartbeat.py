"""When the next heartbeat goes: early, the moment a starting container's health changes.

Contract: `until_due(delay, before, read)` returns after `delay` seconds, or sooner: while
a container in `before` (the reports the last heartbeat carried) is `starting`, it reads
fresh reports every `probe_every` seconds and returns as soon as `health_changed` says
one differs, so the control plane (and the customer waiting on the status page) hears
"healthy" within a probe of it, not up to a heartbeat interval later. A read that fails
(Docker or a volume unreadable) counts as no change: the regular beat reports it. With
nothing starting it is one plain sleep, so an idle worker probes no more than before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from agent.docker_objects import DockerError
from shared.protocol import ContainerReport

# A probe is one local GET per running tenant; a start lasts seconds, so this costs a few
# dozen requests per start and takes the wait from "healthy" to the beat under 0.25 s.
PROBE_EVERY = 0.25

Read = Callable[[], Awaitable[Sequence[ContainerReport]]]


def health_changed(before: Sequence[ContainerReport], after: Sequence[ContainerReport]) -> bool:
    """True when a user's container appeared, went, or changed state or health word."""

    def words(reports: Sequence[ContainerReport]) -> dict[str, tuple[str, str]]:
        return {r.user_id: (r.state, r.health) for r in reports}

    return words(before) != words(after)


def any_starting(reports: Sequence[ContainerReport]) -> bool:
    return any(r.health == "starting" for r in reports)


async def until_due(
    delay: float,
    before: Sequence[ContainerReport],
    read: Read,
    *,
    probe_every: float = PROBE_EVERY,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    if not any_starting(before):
        await sleep(delay)
        return
    deadline = clock() + delay
    while (left := deadline - clock()) > 0:
        await sleep(min(probe_every, left))
        try:
            after = await read()
        except (DockerError, OSError):
            continue
        if health_changed(before, after):
            return
