"""A paid upgrade to a plan with more disk, end to end (control/volumes/steps.py,
agent/volume_grow.py): the real control plane with USER_VOLUMES on, billing facts
applied by its own rules, and the local provider running real agents that mount the
user's loop-backed volume (these tests run as root).

Checked: after the upgrade the volume's file and record are the new plan's size, the
tenant's files stay, and the tenant sees the bigger disk (`df` in its container):
online where root may resize a mounted ext4 (CAP_SYS_RESOURCE), else the user's volume
says why, and the disk grows at its next mount (here, after a drain to another worker).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from control.capacity.providers.hetzner_volumes import volume_name
from control.capacity.providers.local import LocalProvider
from control.plans import DEFAULT_PLAN, Plan
from tests.agent.conftest import new_user
from tests.agent.test_block_volumes import can_resize_online
from tests.agent.test_e2e import until
from tests.agent.test_volumes_local_e2e import STATE, running_on, sh, start_plane
from tests.fixtures import ControlPlane
from tests.test_billing import apply, checkout, sub

pytestmark = [pytest.mark.docker, pytest.mark.blockdev]

SMALL = Plan("small", 256, 0.25, 256, 5, ("price_small",))
ROOMY = Plan("roomy", 384, 0.25, 256, 25, ("price_roomy",))


async def disk_gb(dclient: docker.DockerClient, user: str) -> float:
    """The size of the tenant's state disk, as the tenant sees it, once its one container
    runs: the plan change replaces the container while the disk grows, and the volume's
    report can arrive between the old container's removal and the new one's start."""
    label = f"clawfleet.user={user}"

    async def one_running() -> bool:
        return len(dclient.containers.list(filters={"label": label, "status": "running"})) == 1

    await until(one_running, f"{user}'s one running container", 60)
    line = sh(dclient, user, f"df -k {STATE} | tail -n 1")
    return int(line.split()[1]) / 2**20


async def user_volume(control: ControlPlane, user: str) -> dict[str, Any]:
    _, body = await control.admin("GET", f"/v1/users/{user}")
    return dict(body.get("volume") or {})


async def test_an_upgrade_with_more_disk_grows_the_tenants_volume_and_keeps_its_files(
    control_factory: Callable[..., ControlPlane],
    test_images: dict[str, str],
    users: list[str],
    local_providers: list[LocalProvider],
    dclient: docker.DockerClient,
) -> None:
    plans = {"default": DEFAULT_PLAN, "small": SMALL, "roomy": ROOMY}
    control = await start_plane(control_factory, local_providers, 2, plans=plans)
    user = new_user()
    users.append(user)
    await apply(control, checkout(100, user), sub("active", 101, "price_small"))
    first = await running_on(control, user)
    assert await disk_gb(dclient, user) < 10
    sh(dclient, user, f"echo kept > {STATE}/memory.md && sync")

    await apply(control, sub("active", 102, "price_roomy"))  # the upgrade

    async def resized() -> dict[str, Any] | None:
        volume = await user_volume(control, user)
        return volume if volume.get("size_gb") == 25 else None

    await until(resized, "the volume resized to the new plan's 25 GB", 90)
    backing = Path(
        control.settings.local_workers_dir, "volumes", f"{volume_name('default', user)}.img"
    )
    assert backing.stat().st_size == 25 * 2**30
    await running_on(control, user)
    if can_resize_online():
        await until(lambda: _grown(dclient, user), "the tenant's disk grown online", 60)
    else:

        async def said() -> str | None:
            error = (await user_volume(control, user)).get("error") or ""
            return error if "growing volume" in error else None

        error = await until(said, "why the mounted disk could not grow", 60)
        assert "reports it mounted" in error
        assert await disk_gb(dclient, user) < 10  # in use as it was, never unmounted for it
        await control.admin("POST", f"/v1/servers/{first}/drain")
        await running_on(control, user, away_from=first)
    assert await disk_gb(dclient, user) > 20
    assert sh(dclient, user, f"cat {STATE}/memory.md") == "kept\n"


async def _grown(dclient: docker.DockerClient, user: str) -> bool:
    return await disk_gb(dclient, user) > 20
