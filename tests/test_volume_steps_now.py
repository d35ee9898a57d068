"""A volume's detach waits for the old worker to stop the container and unmount; the
heartbeat that says so runs the autoscaler (which makes the volume steps) at once, not
at its next tick: with the defaults that tick could be 20 s away, the largest wait in a
move with data (docs/benchmarks.md). The scheduled runs are an hour apart here (the
fake Hetzner's fleet settings), so only the heartbeat can have asked for the run."""

from __future__ import annotations

from tests.agent.test_e2e import until
from tests.fakes.hetzner import HetznerFake
from tests.test_volumes_fleet import (
    Start,
    beat,
    cloud,
    drained_away,
    source_provider_id,
    specs,
)

__all__ = ["cloud"]


async def test_the_heartbeat_that_lets_the_volume_go_moves_it_now(
    cloud: Start, hetzner_fake: HetznerFake
) -> None:
    control = await cloud()
    source, target, volume = await drained_away(control, hetzner_fake)
    vid = str(volume["id"])
    assert volume["server"] == int(source_provider_id(hetzner_fake, source))

    await beat(source, [], [])  # stopped and unmounted: no run() from here on

    async def attached_to_target() -> bool:
        return volume["server"] == int(source_provider_id(hetzner_fake, target))

    await until(attached_to_target, "the volume attached to the target", timeout=10)
    assert (await specs(target))["alice"]["volume"]["id"] == vid
