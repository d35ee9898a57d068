"""The fake Hetzner API's volumes, driven by the real hcloud client: what a caller sees must be
what it would see against api.hetzner.cloud (objects, action commands, APIException codes).

The client, `run` (a call in a thread) and `api_error` are tests/fakes/hcloud_client.py's."""

from __future__ import annotations

import math
from typing import Any

from hcloud import Client
from hcloud.locations import Location
from hcloud.servers import Server
from hcloud.volumes import BoundVolume, Volume

from tests.fakes.hcloud_client import api_error, hcloud_client_fixture, run, some  # noqa: F401
from tests.fakes.hetzner import HetznerFake, hetzner_fake_fixture  # noqa: F401
from tests.fakes.hetzner_volumes import MAX_VOLUMES_PER_SERVER


async def make_volume(client: Client, name: str = "data-u1", **kwargs: Any) -> BoundVolume:
    kwargs.setdefault("location", Location(name="nbg1"))
    created = await run(client.volumes.create, size=10, name=name, **kwargs)
    await run(created.action.wait_until_finished)
    return await run(client.volumes.get_by_id, created.volume.id)


async def test_create_attach_detach_resize_delete(
    client: Client, hetzner_fake: HetznerFake
) -> None:
    server = hetzner_fake.add_server("cf-w-0001", {"clawfleet": "worker"})
    created = await run(
        client.volumes.create,
        size=10,
        name="data-u1",
        location=Location(name="nbg1"),
        labels={"managed-by": "clawfleet", "user": "u1"},
        format="ext4",
    )
    assert created.action.command == "create_volume"
    assert created.next_actions == []
    volume = created.volume
    assert volume.linux_device == f"/dev/disk/by-id/scsi-0HC_Volume_{volume.id}"
    assert (volume.size, volume.format, volume.server) == (10, "ext4", None)
    assert some(volume.location).name == "nbg1"
    assert volume.protection == {"delete": False}

    attach = await run(client.volumes.attach, volume, Server(id=server["id"]), automount=False)
    assert attach.command == "attach_volume"
    assert {"id": volume.id, "type": "volume"} in some(attach.resources)
    await run(attach.wait_until_finished)
    assert attach.status == "success"
    seen = await run(client.volumes.get_by_id, volume.id)
    assert seen.server is not None and seen.server.id == server["id"]
    assert hetzner_fake.servers[server["id"]]["volumes"] == [volume.id]
    on_server = await run(client.servers.get_by_id, server["id"])
    assert [v.id for v in some(on_server.volumes)] == [volume.id]

    resize = await run(client.volumes.resize, volume, 20)
    assert resize.command == "resize_volume"
    assert (await run(client.volumes.get_by_id, volume.id)).size == 20

    detach = await run(client.volumes.detach, volume)
    assert detach.command == "detach_volume"
    await run(detach.wait_until_finished)
    assert (await run(client.volumes.get_by_id, volume.id)).server is None
    assert hetzner_fake.servers[server["id"]]["volumes"] == []

    assert await run(client.volumes.delete, volume) is True
    error = await api_error(client.volumes.get_by_id, volume.id)
    assert error.code == "not_found"


async def test_create_on_a_server_attaches_it_in_the_servers_location(
    client: Client, hetzner_fake: HetznerFake
) -> None:
    server = hetzner_fake.add_server("cf-w-0001", location="hel1")
    created = await run(
        client.volumes.create, size=10, name="data-u2", server=Server(id=server["id"])
    )
    assert some(created.volume.location).name == "hel1"
    assert [a.command for a in created.next_actions] == ["attach_volume"]
    assert hetzner_fake.volumes[some(created.volume.id)]["server"] == server["id"]


async def test_list_filters_by_label_selector_and_name_and_paginates(client: Client) -> None:
    for i in range(3):
        await make_volume(client, f"data-u{i}", labels={"user": f"u{i}", "managed-by": "cf"})
    await make_volume(client, "other", labels={"managed-by": "someone-else"})
    ours = await run(client.volumes.get_all, label_selector="managed-by=cf")
    assert sorted(some(v.name) for v in ours) == ["data-u0", "data-u1", "data-u2"]
    assert some(await run(client.volumes.get_by_name, "other")).labels == {
        "managed-by": "someone-else"
    }
    page = await run(client.volumes.get_list, page=2, per_page=3)
    assert [v.name for v in page.volumes] == ["other"]
    assert some(page.meta.pagination).total_entries == 4
    assert some(page.meta.pagination).previous_page == 1


async def test_list_filters_by_status_and_refuses_a_bad_selector(
    client: Client, hetzner_fake: HetznerFake
) -> None:
    ready = await make_volume(client, "ready")
    hetzner_fake.action_seconds = math.inf  # the next one stays `creating`
    await run(client.volumes.create, size=10, name="new", location=Location(name="nbg1"))
    creating = await run(client.volumes.get_all, status=["creating"])
    assert [v.name for v in creating] == ["new"]
    both = await run(client.volumes.get_all, status=["available", "creating"])
    assert [v.name for v in both] == [ready.name, "new"]
    error = await api_error(client.volumes.get_all, label_selector="a b")
    assert (error.code, error.message) == (
        "invalid_input",
        "invalid label_selector: unsupported term 'a b'",
    )


async def test_attaching_to_a_server_in_another_location_is_refused(
    client: Client, hetzner_fake: HetznerFake
) -> None:
    far = hetzner_fake.add_server("cf-w-0002", location="fsn1")
    volume = await make_volume(client)
    error = await api_error(client.volumes.attach, volume, Server(id=far["id"]))
    assert error.code == "invalid_input"
    assert error.details == {
        "fields": [{"name": "server", "messages": [error.message.split(": ", 1)[1]]}]
    }
    assert "same location" in error.message
    assert hetzner_fake.volumes[some(volume.id)]["server"] is None
    assert far["volumes"] == []


async def test_the_seventeenth_volume_on_a_server_is_refused(
    client: Client, hetzner_fake: HetznerFake
) -> None:
    server = hetzner_fake.add_server("cf-w-0001")
    for i in range(MAX_VOLUMES_PER_SERVER):
        volume = await make_volume(client, f"data-u{i}")
        await run(client.volumes.attach, volume, Server(id=server["id"]))
    extra = await make_volume(client, "data-u16")
    error = await api_error(client.volumes.attach, extra, Server(id=server["id"]))
    assert error.code == "resource_limit_exceeded"
    assert len(server["volumes"]) == MAX_VOLUMES_PER_SERVER == 16
    create_error = await api_error(
        client.volumes.create, size=10, name="data-u17", server=Server(id=server["id"])
    )
    assert create_error.code == "resource_limit_exceeded"
    assert "data-u17" not in [v["name"] for v in hetzner_fake.volumes.values()]


async def test_a_running_action_locks_the_volume_and_its_server(
    client: Client, hetzner_fake: HetznerFake
) -> None:
    server = hetzner_fake.add_server("cf-w-0001")
    volume = await make_volume(client)
    other = await make_volume(client, "data-u9")
    hetzner_fake.action_seconds = math.inf  # the attach runs until the test ends it
    attach = await run(client.volumes.attach, volume, Server(id=server["id"]))
    assert (await api_error(client.volumes.detach, volume)).code == "locked"
    assert (await api_error(client.volumes.resize, volume, 30)).code == "locked"
    assert (await api_error(client.volumes.delete, volume)).code == "locked"
    blocked = await api_error(client.volumes.attach, other, Server(id=server["id"]))
    assert blocked.code == "locked"  # the server is busy too
    await run(attach.reload)
    assert attach.status == "running"  # polling does not end the window
    attach = await run(client.actions.get_by_id, some(attach.id))

    hetzner_fake.finish_actions()
    await run(attach.wait_until_finished)
    assert attach.status == "success"
    detach = await run(client.volumes.detach, volume)
    assert detach.command == "detach_volume"


async def test_refusals_as_the_api_words_them(client: Client, hetzner_fake: HetznerFake) -> None:
    server = hetzner_fake.add_server("cf-w-0001")
    volume = await make_volume(client)
    too_small = await api_error(
        client.volumes.create, size=9, name="tiny", location=Location(name="nbg1")
    )
    assert too_small.code == "invalid_input"
    assert too_small.details["fields"][0]["name"] == "size"
    taken = await api_error(
        client.volumes.create, size=10, name="data-u1", location=Location(name="nbg1")
    )
    assert taken.code == "uniqueness_error"
    assert (await api_error(client.volumes.resize, volume, 10)).code == "invalid_input"
    assert (await api_error(client.volumes.detach, volume)).code == "invalid_input"
    missing = Volume(id=424242)
    assert (
        await api_error(client.volumes.attach, missing, Server(id=server["id"]))
    ).code == "not_found"
    assert (await api_error(client.volumes.delete, missing)).code == "not_found"

    await run(client.volumes.attach, volume, Server(id=server["id"]))
    again = await api_error(client.volumes.attach, volume, Server(id=server["id"]))
    assert again.code == "volume_already_attached"
    attached = await api_error(client.volumes.delete, volume)
    assert attached.code == "volume_already_attached"
    assert volume.id in hetzner_fake.volumes

    await run(client.volumes.detach, volume)
    await run(client.volumes.change_protection, volume, delete=True)
    assert (await api_error(client.volumes.delete, volume)).code == "protected"


async def test_deleting_a_server_detaches_its_volumes_and_keeps_them(
    client: Client, hetzner_fake: HetznerFake
) -> None:
    server = hetzner_fake.add_server("cf-w-0001")
    volume = await make_volume(client)
    await run(client.volumes.attach, volume, Server(id=server["id"]))
    await run(client.servers.delete, Server(id=server["id"]))
    kept = await run(client.volumes.get_by_id, volume.id)
    assert kept.server is None


async def test_faults_reach_volume_endpoints(client: Client, hetzner_fake: HetznerFake) -> None:
    hetzner_fake.inject("POST /volumes", 422, "no_space_left_in_location")
    error = await api_error(
        client.volumes.create, size=10, name="data-u1", location=Location(name="nbg1")
    )
    assert error.code == "no_space_left_in_location"
    assert hetzner_fake.volumes == {}
    volume = await make_volume(client)
    hetzner_fake.inject("POST /volumes/{id}/actions/attach", 503, "unavailable")
    server = hetzner_fake.add_server("cf-w-0001")
    assert (
        await api_error(client.volumes.attach, volume, Server(id=server["id"]))
    ).code == "unavailable"
    assert server["volumes"] == []
    assert hetzner_fake.count("POST /volumes/{id}/actions/attach") == 1
