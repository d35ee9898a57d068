"""The Hetzner provider's volume methods, the real hcloud client against the fake API
(tests/fakes/hetzner_volumes.py), and the local provider's."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from control.capacity.providers.base import ProviderError
from control.capacity.providers.hetzner import HetznerProvider
from control.capacity.providers.hetzner_volumes import volume_name
from control.capacity.providers.local import LocalProvider
from tests.fakes.hetzner import HetznerFake, hetzner_fake_fixture  # noqa: F401

OURS = {"managed-by": "clawfleet", "clawfleet-cluster": "c1", "clawfleet-user": "alice"}


@pytest.fixture
async def provider(hetzner_fake: HetznerFake) -> AsyncIterator[HetznerProvider]:
    made = HetznerProvider(hetzner_fake.token, hetzner_fake.url, ("cpx22",), ("nbg1",), timeout=5)
    yield made
    await made.close()


async def test_create_is_idempotent_by_name_and_labelled(
    provider: HetznerProvider, hetzner_fake: HetznerFake
) -> None:
    first = await provider.create_volume("cf-c1-alice", 10, "nbg1", OURS)
    again = await provider.create_volume("cf-c1-alice", 10, "nbg1", OURS)
    assert again == first and len(hetzner_fake.volumes) == 1
    assert first.device == f"/dev/disk/by-id/scsi-0HC_Volume_{first.provider_id}"
    assert first.location == "nbg1" and first.server_id is None
    assert hetzner_fake.volumes[int(first.provider_id)]["labels"] == OURS
    assert [v.name for v in await provider.list_volumes({"clawfleet-cluster": "c1"})] == [
        "cf-c1-alice"
    ]
    assert await provider.list_volumes({"clawfleet-cluster": "other"}) == []


async def test_a_foreign_volume_of_that_name_is_not_adopted(
    provider: HetznerProvider, hetzner_fake: HetznerFake
) -> None:
    await provider.create_volume("cf-c1-alice", 10, "nbg1", {"managed-by": "someone"})
    with pytest.raises(ProviderError) as info:
        await provider.create_volume("cf-c1-alice", 10, "nbg1", OURS)
    assert (info.value.kind, info.value.code) == ("invalid", "uniqueness_error")


async def test_create_after_a_lost_reply_adopts(
    provider: HetznerProvider, hetzner_fake: HetznerFake
) -> None:
    hetzner_fake.inject("POST /volumes", 503, "unavailable")
    with pytest.raises(ProviderError) as info:
        await provider.create_volume("cf-c1-alice", 10, "nbg1", OURS)
    assert info.value.kind == "transient"  # refused before it was stored: nothing to adopt
    made = await provider.create_volume("cf-c1-alice", 10, "nbg1", OURS)
    assert len(hetzner_fake.volumes) == 1 and made.name == "cf-c1-alice"


async def test_attach_detach_delete_and_their_retries(
    provider: HetznerProvider, hetzner_fake: HetznerFake
) -> None:
    server = hetzner_fake.add_server("w1", {}, location="nbg1")
    volume = await provider.create_volume("cf-c1-alice", 10, "nbg1", OURS)
    await provider.attach(volume, str(server["id"]))
    await provider.attach(volume, str(server["id"]))  # a retry: already attached there
    assert hetzner_fake.volumes[int(volume.provider_id)]["server"] == server["id"]
    await provider.detach(volume)
    await provider.detach(volume)  # a retry: already detached
    assert hetzner_fake.volumes[int(volume.provider_id)]["server"] is None
    await provider.delete_volume(volume)
    await provider.delete_volume(volume)  # gone already
    assert hetzner_fake.volumes == {}


async def test_attach_errors_have_their_kinds(
    provider: HetznerProvider, hetzner_fake: HetznerFake
) -> None:
    here = hetzner_fake.add_server("w1", {}, location="nbg1")
    there = hetzner_fake.add_server("w2", {}, location="fsn1")
    volume = await provider.create_volume("cf-c1-alice", 10, "nbg1", OURS)
    with pytest.raises(ProviderError) as info:
        await provider.attach(volume, str(there["id"]))
    assert (info.value.kind, info.value.code) == ("invalid", "location_mismatch")
    here["volumes"].extend(range(1000, 1016))  # 16 attached: Hetzner's limit
    with pytest.raises(ProviderError) as info:
        await provider.attach(volume, str(here["id"]))
    assert (info.value.kind, info.value.code) == ("limit", "resource_limit_exceeded")
    del here["volumes"][:]
    hetzner_fake.action_seconds = math.inf  # the attach action keeps the volume locked
    await provider.attach(volume, str(here["id"]))
    with pytest.raises(ProviderError) as info:
        await provider.detach(volume)
    assert (info.value.kind, info.value.code) == ("transient", "locked")
    hetzner_fake.finish_actions()
    await provider.detach(volume)
    hetzner_fake.volumes.clear()
    with pytest.raises(ProviderError) as info:
        await provider.attach(volume, str(here["id"]))
    assert info.value.kind == "not_found"


async def test_resize_grows_and_a_retry_or_a_smaller_size_changes_nothing(
    provider: HetznerProvider, hetzner_fake: HetznerFake
) -> None:
    server = hetzner_fake.add_server("w1", {}, location="nbg1")
    volume = await provider.create_volume("cf-c1-alice", 10, "nbg1", OURS)
    await provider.attach(volume, str(server["id"]))
    hetzner_fake.finish_actions()
    await provider.resize_volume(volume, 25)  # attached: grown where it is
    stored = hetzner_fake.volumes[int(volume.provider_id)]
    assert stored["size"] == 25 and stored["server"] == server["id"]
    hetzner_fake.finish_actions()
    await provider.resize_volume(volume, 25)  # a retry after a lost reply: the API refuses
    await provider.resize_volume(volume, 10)  # a smaller plan: never shrunk
    assert stored["size"] == 25
    hetzner_fake.action_seconds = math.inf
    await provider.resize_volume(volume, 30)
    with pytest.raises(ProviderError) as info:  # its action still runs
        await provider.resize_volume(volume, 40)
    assert (info.value.kind, info.value.code) == ("transient", "locked")
    hetzner_fake.finish_actions()
    with pytest.raises(ProviderError) as info:
        await provider.resize_volume(volume, 20_000)  # past Hetzner's 10 TB
    assert (info.value.kind, info.value.code) == ("invalid", "invalid_input")
    assert stored["size"] == 30
    hetzner_fake.volumes.clear()
    with pytest.raises(ProviderError) as info:
        await provider.resize_volume(volume, 50)
    assert info.value.kind == "not_found"


def test_volume_names_fit_hetzners_rule() -> None:
    assert volume_name("c1", "alice") == "cf-c1-alice"
    long = volume_name("c" * 63, "u" * 64)
    assert len(long) <= 64 and long[-1].isalnum()


async def test_local_volumes_are_names_that_record_where_they_are(tmp_path: Path) -> None:
    local = LocalProvider(str(tmp_path))
    volume = await local.create_volume("cf-c1-alice", 10, "local", OURS)
    assert volume.device == "loop:cf-c1-alice" and volume.provider_id == "cf-c1-alice"
    assert await local.create_volume("cf-c1-alice", 10, "local", OURS) == volume
    await local.attach(volume, "w1")
    with pytest.raises(ProviderError) as info:
        await local.attach(volume, "w2")
    assert info.value.code == "volume_already_attached"
    with pytest.raises(ProviderError):
        await local.delete_volume(volume)
    assert [v.server_id for v in await local.list_volumes(OURS)] == ["w1"]
    await local.resize_volume(volume, 20)
    await local.resize_volume(volume, 15)  # never shrunk
    assert [v.size_gb for v in await local.list_volumes(OURS)] == [20]
    await local.detach(volume)
    await local.detach(volume)
    await local.delete_volume(volume)
    await local.delete_volume(volume)
    assert await local.list_volumes({}) == []
    with pytest.raises(ProviderError) as info:
        await local.resize_volume(volume, 30)
    assert info.value.kind == "not_found"
