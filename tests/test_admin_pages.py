"""The admin listings in pages, the fleet summary and /metrics' aggregates (issue 16):
control/api/admin_pages.py, control/api/views.py, control/api/metrics_snapshot.py.

Every fleet here is made through the API (join tokens, registration, users, cordons)
and a real control plane; only what the API cannot do (a server dead or deleted, a
server's type) is written into its database, as the liveness sweep or the autoscaler
would write it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import pytest

from control.api import admin_pages, views
from control.api.admin_pages import PageQuery, decode_cursor, encode_cursor, parse_page
from control.api.metrics_snapshot import HEARTBEAT_AGE_BUCKETS, heartbeat_ages
from control.appkeys import FLEET
from control.capacity.providers.base import Provider, ServerType
from control.capacity.providers.local import LocalProvider
from control.errors import BadRequest
from control.settings import Settings
from control.users.rooms import HOLDERS_SQL
from tests.fixtures import ControlPlane
from tests.test_protocol import registered
from tests.worker import FakeWorker


# --- the page a query asks for (pure) --------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "query", "expected"),
    [
        ("servers", {}, PageQuery(100, None, ())),
        ("servers", {"limit": "1"}, PageQuery(1, None, ())),
        ("servers", {"limit": "500"}, PageQuery(500, None, ())),
        ("servers", {"status": "dead,active,dead"}, PageQuery(100, None, ("active", "dead"))),
        ("servers", {"server": "w1"}, PageQuery(100, None, ())),  # not a servers filter
        ("users", {"state": "pending", "server": "w1"}, PageQuery(100, None, ("pending",), "w1")),
        ("users", {"cursor": encode_cursor("users", "bob")}, PageQuery(100, "bob", ())),
    ],
)
def test_parse_page(kind: admin_pages.Kind, query: dict[str, str], expected: PageQuery) -> None:
    assert parse_page(kind, query) == expected


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "0"},
        {"limit": "501"},
        {"limit": "-1"},
        {"limit": "ten"},
        {"limit": "1.5"},
        {"limit": "\u0661"},  # an Arabic-Indic one: a digit to str.isdigit, not to us
        {"status": "running"},  # a user's state, not a server's status
        {"status": "active,bogus"},
        {"cursor": "%%%"},
        {"cursor": "bm90IGpzb24"},  # base64 of "not json"
        {"cursor": encode_cursor("users", "alice")},  # the other listing's cursor
    ],
)
def test_bad_page_requests_are_refused(query: dict[str, str]) -> None:
    with pytest.raises(BadRequest):
        parse_page("servers", query)


@pytest.mark.parametrize("last", ["a", "srv-0001", "ünï/=+?", ""])
def test_a_cursor_round_trips_and_is_url_safe(last: str) -> None:
    cursor = encode_cursor("servers", last)
    assert decode_cursor("servers", cursor) == last
    assert cursor.replace("-", "").replace("_", "").isalnum() or cursor == ""


# --- pages over HTTP ---------------------------------------------------------------------
async def add_users(control: ControlPlane, *names: str) -> None:
    for name in names:
        status, body = await control.admin(
            "POST", "/v1/users", {"user_id": name, "subdomain": name}
        )
        assert status == 201, body


async def walk(control: ControlPlane, path: str, cursor: str | None = None) -> list[list[str]]:
    """Every page of a listing from `cursor` on, following next_cursor, as lists of ids."""
    pages: list[list[str]] = []
    kind, key = ("users", "user_id") if path.startswith("/v1/users") else ("servers", "id")
    while True:
        sep = "&" if "?" in path else "?"
        status, body = await control.admin(
            "GET", path + (f"{sep}cursor={cursor}" if cursor else "")
        )
        assert status == 200, body
        pages.append([item[key] for item in body[kind]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert body[kind], "a page with a next cursor is never empty"


async def test_pages_cover_every_user_once_in_id_order(control: ControlPlane) -> None:
    names = [f"u{i}" for i in range(7)]
    await add_users(control, *reversed(names))  # created in the other order
    assert await walk(control, "/v1/users?limit=3") == [names[:3], names[3:6], names[6:]]
    assert await walk(control, "/v1/users?limit=7") == [names]
    assert await walk(control, "/v1/users") == [names]  # the default page holds them


async def test_a_walk_neither_repeats_nor_skips_while_users_are_added(
    control: ControlPlane,
) -> None:
    await add_users(control, "b", "d", "f", "h", "j")
    status, first = await control.admin("GET", "/v1/users?limit=2")
    assert status == 200 and [u["user_id"] for u in first["users"]] == ["b", "d"]
    # Added during the walk: behind the cursor (seen by the next walk), and ahead of it.
    await add_users(control, "a", "c", "e", "z")
    rest = await walk(control, "/v1/users?limit=2", first["next_cursor"])
    assert rest == [["e", "f"], ["h", "j"], ["z"]]
    seen = ["b", "d", *(uid for page in rest for uid in page)]
    assert len(seen) == len(set(seen))


async def test_filters_by_state_server_and_status(control: ControlPlane) -> None:
    w2 = await registered(control, "w2")
    assert (await control.admin("POST", f"/v1/servers/{w2.key_id}/cordon"))[0] == 200
    w1 = await registered(control, "w1")
    await add_users(control, "p1", "p2")
    assert (await control.admin("POST", f"/v1/servers/{w1.key_id}/cordon"))[0] == 200
    await add_users(control, "q1", "q2", "q3")  # no room: pending
    await set_servers(control, "UPDATE servers SET status = 'deleted' WHERE id = ?", w2.key_id)

    async def ids(path: str) -> list[str]:
        return [uid for page in await walk(control, path) for uid in page]

    assert await ids("/v1/users?state=pending") == ["q1", "q2", "q3"]
    assert await ids("/v1/users?state=pending&limit=1") == ["q1", "q2", "q3"]
    assert await ids("/v1/users?state=provisioning") == ["p1", "p2"]
    assert await ids("/v1/users?state=provisioning,pending") == ["p1", "p2", "q1", "q2", "q3"]
    assert await ids(f"/v1/users?server={w1.key_id}") == ["p1", "p2"]
    assert await ids(f"/v1/users?server={w1.key_id}&state=pending") == []
    assert await ids("/v1/servers?status=active") == [w1.key_id]
    assert await ids("/v1/servers?status=deleted") == [w2.key_id]
    assert await ids("/v1/servers?status=deleted,active") == sorted([w1.key_id, w2.key_id])


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v1/users?limit=0", "bad_request"),
        ("/v1/users?limit=501", "bad_request"),
        ("/v1/servers?limit=x", "bad_request"),
        ("/v1/users?cursor=!!", "bad_cursor"),
        (f"/v1/servers?cursor={encode_cursor('users', 'a')}", "bad_cursor"),
        ("/v1/users?state=gone", "bad_request"),
        ("/v1/servers?limit=1&limit=2", "duplicate_parameter"),
    ],
)
async def test_bad_page_requests_are_400(control: ControlPlane, path: str, code: str) -> None:
    status, body = await control.admin("GET", path)
    assert status == 400, body
    assert body["error"]["code"] == code


def container(user_id: str, error: str | None = None) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "state": "running" if error is None else "exited",
        "health": "healthy" if error is None else "unhealthy",
        "image_id": "sha256:" + "0" * 64,
        "started_at": "2026-11-20T10:00:00Z",
        "restart_count": 0,
        "error": error,
    }


async def test_a_page_of_users_parses_each_servers_report_once(
    control: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = await registered(control, "w1")
    await add_users(control, "a", "b", "c", "d")
    assert (await worker.heartbeat([container(u) for u in "abcd"])).status == 200
    parsed: list[str | None] = []
    real = views._reports

    def counted(report: str | None) -> Any:
        parsed.append(report)
        return real(report)

    monkeypatch.setattr(views, "_reports", counted)
    status, body = await control.admin("GET", "/v1/users")
    assert status == 200
    assert [u["container"]["state"] for u in body["users"]] == ["running"] * 4
    assert len(parsed) == 1  # one server, parsed once for its four users


async def test_the_servers_holders_through_their_index_are_holders_sql(
    control: ControlPlane,
) -> None:
    """views.holders_among is HOLDERS_SQL for some servers: placed, suspended and
    moving users included."""
    w1 = await registered(control, "w1")
    await add_users(control, "a", "b", "c")
    w2 = await registered(control, "w2")
    assert (await control.admin("POST", "/v1/users/b/suspend"))[0] == 200
    status, moved = await control.admin("POST", "/v1/users/a/move", {"server_id": w2.key_id})
    assert status == 200 and moved["moving_from"] == w1.key_id, moved
    ids = [w1.key_id, w2.key_id]
    store = control.app[FLEET].store if control.app else None
    assert store is not None
    marks = f"({', '.join('?' * len(ids))})"
    want = await store.fetch_all(f"SELECT * FROM ({HOLDERS_SQL}) WHERE holder IN {marks}", ids)
    got = await store.fetch_all(views.holders_among(marks), ids * 3)
    assert sorted(map(tuple, got)) == sorted(map(tuple, want))
    assert len(want) == 4  # a twice (moving), b (suspended) and c


# --- the summary -------------------------------------------------------------------------
class PricedLocal(LocalProvider):
    """The local provider, but a server type has a price (as Hetzner's do)."""

    def server_type(self, name: str) -> ServerType:
        return ServerType(name=name, cpus=4, memory_mb=8192, disk_gb=80, hourly_price=0.0123)


def priced_local(settings: Settings) -> Provider:
    return PricedLocal(settings.local_workers_dir)


async def set_servers(control: ControlPlane, sql: str, *params: object) -> None:
    """As the liveness sweep or the autoscaler writes it; off the loop, so that the
    control plane's own writer can finish what it holds meanwhile."""

    def write() -> None:
        with sqlite3.connect(control.settings.database_path, timeout=10) as db:
            db.execute(sql, params)

    await asyncio.to_thread(write)


async def fleet_for_summary(control: ControlPlane) -> dict[str, FakeWorker]:
    """w1 active holding two users, w2 dead holding one, w3 deleted, one user pending."""
    w1 = await registered(control, "w1")
    await add_users(control, "a1", "a2")
    await control.admin("POST", f"/v1/servers/{w1.key_id}/cordon")
    w2 = await registered(control, "w2")
    await add_users(control, "b1")
    await control.admin("POST", f"/v1/servers/{w2.key_id}/cordon")
    w3 = await registered(control, "w3")
    await control.admin("POST", f"/v1/servers/{w3.key_id}/cordon")
    await add_users(control, "c1")  # every server cordoned: pending
    assert (await w1.heartbeat([container("a1")])).status == 200
    await set_servers(control, "UPDATE servers SET server_type = 'cpx22'")
    await set_servers(control, "UPDATE servers SET status = 'dead' WHERE id = ?", w2.key_id)
    await set_servers(control, "UPDATE servers SET status = 'deleted' WHERE id = ?", w3.key_id)
    return {"w1": w1, "w2": w2, "w3": w3}


async def test_the_summary_adds_up_what_the_listings_show(
    control_factory: Callable[..., ControlPlane],
) -> None:
    control = control_factory(priced_local)
    await control.start()
    await fleet_for_summary(control)
    status, summary = await control.admin("GET", "/v1/summary")
    assert status == 200, summary
    _, servers_page = await control.admin("GET", "/v1/servers")
    _, users_page = await control.admin("GET", "/v1/users")
    servers, users = servers_page["servers"], users_page["users"]
    # The dashboard's rules, over every row: live = not deleted, counted = neither dead.
    live = [s for s in servers if s["status"] != "deleted"]
    counted = [s for s in live if s["status"] != "dead"]
    assert summary["servers"]["live"] == len(live) == 2
    assert summary["servers"]["by_status"] == {"active": 1, "dead": 1, "deleted": 1}
    assert summary["servers"]["cordoned"] == 2
    memory = summary["capacity"]["memory_mb"]
    assert memory["used"] == sum(s["capacity"]["memory_mb"]["used"] for s in counted) == 2048
    assert memory["total"] == sum(s["capacity"]["memory_mb"]["total"] for s in counted)
    assert summary["capacity"]["cpus"]["used"] == 1.0
    # a1 reported running and healthy: running; a2 and b1 are still provisioning.
    assert summary["users"]["by_state"] == {"running": 1, "provisioning": 2, "pending": 1}
    assert summary["users"]["total"] == len(users) == 4
    placed = [u for u in users if u["state"] in ("provisioning", "running")]
    assert summary["containers"] == {"running": 1, "desired": len(placed)}
    assert len(placed) == 3
    assert summary["cost"] == {
        "hourly": pytest.approx(sum(s["hourly_price"] for s in live)),
        "priced_servers": 2,
        "unpriced_servers": 0,
    }
    assert summary["volume_cost"] == servers_page["volume_cost"]
    assert summary["provider"]["state"] == "ok"
    assert len(str(summary)) < 2000  # a few numbers, whatever the fleet


# --- /metrics ----------------------------------------------------------------------------
async def scrape(control: ControlPlane) -> str:
    async with control.session.get(control.url + "/metrics") as r:
        assert r.status == 200
        return await r.text()


def value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in /metrics")


async def test_metrics_have_aggregates_and_no_series_per_server(control: ControlPlane) -> None:
    workers = [await registered(control, f"w{i}") for i in range(3)]
    await add_users(control, "a", "b")
    for w in workers:
        assert (await w.heartbeat()).status == 200
    placed = await control.admin("GET", "/v1/users/a")
    holder = next(w for w in workers if w.key_id == placed[1]["server_id"])
    assert (await holder.heartbeat([container("a", error="OOM")])).status == 200
    text = await scrape(control)
    for w in workers:
        assert w.key_id not in text
    assert value(text, 'clawfleet_servers{status="active"}') == 3
    assert value(text, "clawfleet_heartbeat_age_seconds_count") == 3
    assert value(text, 'clawfleet_heartbeat_age_seconds_bucket{le="+Inf"}') == 3
    assert value(text, 'clawfleet_heartbeat_age_seconds_bucket{le="900.0"}') == 3
    assert value(text, "clawfleet_heartbeat_oldest_age_seconds") < 60
    assert value(text, "clawfleet_container_errors") == 1
    assert "# TYPE clawfleet_heartbeat_age_seconds histogram" in text


@pytest.mark.parametrize(
    ("ages", "within"),
    [
        ([], [0] * len(HEARTBEAT_AGE_BUCKETS)),
        ([0.5, 3.0, 3.0, 20.0], [1, 1, 3, 3, 3, 4, 4, 4, 4, 4]),
        ([-2.0], [1] * len(HEARTBEAT_AGE_BUCKETS)),  # a clock ahead: age 0
        ([5.0, 1000.0], [0, 0, 1, 1, 1, 1, 1, 1, 1, 1]),  # the last only in +Inf
    ],
)
async def test_heartbeat_ages_are_a_cumulative_histogram(
    control: ControlPlane, ages: list[float], within: list[int]
) -> None:
    now = time.time()
    workers = [await registered(control, f"w{i}") for i in range(len(ages))]
    for w, age in zip(workers, ages, strict=True):
        await set_servers(
            control,
            "UPDATE servers SET status = 'active', last_heartbeat = ? WHERE id = ?",
            now - age,
            w.key_id,
        )
    assert control.app is not None
    got = await heartbeat_ages(control.app[FLEET].store, now)
    assert [n for _, n in got["buckets"]] == within
    assert got["count"] == len(ages)
    assert got["sum"] == pytest.approx(sum(max(0.0, a) for a in ages))
    assert got["oldest"] == pytest.approx(max([0.0, *ages]))


def fleet_series(text: str) -> list[str]:
    """The series of the fleet's gauges and histogram (process counters aside)."""
    names = ("clawfleet_heartbeat_", "clawfleet_servers", "clawfleet_users")
    return [line.split(" ")[0] for line in text.splitlines() if line.startswith(names)]


async def test_metrics_series_do_not_grow_with_the_fleet(control: ControlPlane) -> None:
    """The fleet's series are the same at one worker and at twenty."""
    first = await registered(control, "w0")
    assert (await first.heartbeat()).status == 200
    one = fleet_series(await scrape(control))
    more = await asyncio.gather(*(registered(control, f"w{i}") for i in range(1, 20)))
    for w in more:
        assert (await w.heartbeat()).status == 200
    text = await scrape(control)
    assert value(text, "clawfleet_heartbeat_age_seconds_count") == 20
    assert fleet_series(text) == one
    assert "server=" not in text
