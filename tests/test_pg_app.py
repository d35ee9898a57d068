"""The control plane on PostgreSQL (DATABASE_URL): the setting, the app's store, wake bus
and leadership, two replicas' room indexes on one database, and a password that never
shows."""

from __future__ import annotations

import random
from pathlib import Path
from typing import cast

import pytest

from control.__main__ import database_name
from control.api.agent_wakes import WAKE_BUS
from control.appkeys import LEADERSHIP, STORE
from control.db.postgres import PostgresStore
from control.db.store import Store, StoreUnavailable
from control.fleet import Fleet
from control.keyring import Keyring
from control.settings import Settings, SettingsError
from tests.fixtures import INTERNAL_SECRET, ControlPlane, make_settings
from tests.test_room_index import BIG, SMALL, World, join

PASSWORD = "pw-" + "s3cr3t" * 5
REQUIRED = {"ADMIN_TOKEN": "a" * 32, "INTERNAL_SECRET": "b" * 32}


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("", True),  # SQLite at DATABASE_PATH
        (f"postgresql://clawfleet:{PASSWORD}@db.internal:5432/clawfleet", True),
        ("postgres://clawfleet@10.0.0.5/clawfleet?sslmode=require", True),
        ("postgresql:///clawfleet?host=/run/postgresql", True),  # a Unix socket
        (f"postgresql://clawfleet:{PASSWORD}@db.internal:port/clawfleet", False),
        (f"mysql://clawfleet:{PASSWORD}@db.internal/clawfleet", False),
        (f"postgresql://clawfleet:{PASSWORD}@db.internal/", False),  # no database
        ("data/clawfleet.db", False),
    ],
)
def test_database_url_is_empty_or_postgresql_and_never_repeated(value: str, accepted: bool) -> None:
    env = REQUIRED | {"DATABASE_URL": value}
    if accepted:
        settings = Settings.from_env(env)
        assert settings.database_url == value and PASSWORD not in repr(settings)
        return
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(env)
    assert "DATABASE_URL" in str(refused.value) and PASSWORD not in str(refused.value)


async def test_the_app_on_postgres_listens_for_wakes_and_leads(
    postgres_url: str, tmp_path: Path
) -> None:
    plane = ControlPlane(make_settings(tmp_path, database_url=postgres_url))
    await plane.start()
    app = plane.app
    assert app is not None
    try:
        assert isinstance(app[STORE], PostgresStore)
        bus = app[WAKE_BUS]
        await bus.until_connected(1)
        assert bus.backend_pid() is not None
        assert app[LEADERSHIP].term is not None  # the only replica leads
    finally:
        await plane.stop()
    assert bus.backend_pid() is None  # shut down: the bus no longer listens


async def test_the_app_on_sqlite_has_no_wake_bus(tmp_path: Path) -> None:
    plane = ControlPlane(make_settings(tmp_path, database_url=""))
    await plane.start()
    try:
        assert plane.app is not None and WAKE_BUS not in plane.app
        assert isinstance(plane.app[STORE], Store)
    finally:
        await plane.close()


async def replica(url: str, tmp_path: Path) -> Fleet:
    store = cast(Store, PostgresStore(url))
    await store.open()
    settings = make_settings(tmp_path, plans={"default": SMALL, "big": BIG})
    fleet = Fleet(settings, store, Keyring(INTERNAL_SECRET))
    await fleet.start()
    return fleet


async def test_a_user_placed_through_one_replica_is_seen_by_the_other_before_it_places(
    postgres_url: str, tmp_path: Path
) -> None:
    a, b = await replica(postgres_url, tmp_path), await replica(postgres_url, tmp_path)
    try:
        world = World(a, random.Random(0))
        await join(world, 1536)  # less the 512 MB reserve: room for two small users
        (server,) = world.workers
        await a.create_user("u1", "u1", "default")
        await b.create_user("u2", "u2", "default")  # B sees A's user and the worker
        row = await b.store.fetch_one("SELECT server_id FROM users WHERE id = 'u2'")
        assert row is not None and row["server_id"] == server  # placed by B, at once
        await a.create_user("u3", "u3", "default")  # no room left, whoever places it
        rows = await a.store.fetch_all("SELECT id, server_id FROM users ORDER BY id")
        assert [(r["id"], r["server_id"]) for r in rows] == [
            ("u1", server),
            ("u2", server),
            ("u3", None),
        ]
        assert b.room_index.rooms() == a.room_index.rooms()
        assert b.room_index.rooms()[0].memory_free_mb < SMALL.memory_mb
    finally:
        for fleet in (a, b):
            await fleet.heartbeats.close()
            await fleet.store.close()


async def test_the_app_on_postgres_never_shows_the_database_password(
    postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The test cluster trusts every local login: any password is accepted.
    url = postgres_url.replace("@", f":{PASSWORD}@", 1)
    settings = make_settings(tmp_path, database_url=url)
    assert PASSWORD not in repr(settings) and PASSWORD not in database_name(settings)
    plane = ControlPlane(settings)
    await plane.start()
    try:
        for path in ("/readyz", "/v1/summary", "/metrics", "/dashboard"):
            async with plane.session.get(
                plane.url + path, headers={"Authorization": f"Bearer {plane.admin_token}"}
            ) as r:
                assert PASSWORD not in await r.text(), path
        status, body = await plane.admin("GET", "/v1/summary")
        assert status == 200 and PASSWORD not in str(body)
    finally:
        await plane.close()
    unreachable = PostgresStore(url.replace(url.split("@")[1].split("/")[0], "127.0.0.1:1"))
    with pytest.raises(StoreUnavailable) as refused:
        await unreachable.open()
    assert PASSWORD not in str(refused.value)
    assert not [r for r in caplog.records if PASSWORD in r.getMessage() + (r.exc_text or "")]
