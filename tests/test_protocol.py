"""The signed worker protocol, end to end against the real app and SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import pytest
from multidict import CIMultiDict

from control.appkeys import FLEET
from control.workers import nonces, servers
from control.workers.auth import REVOKED_STATUSES
from shared import signing
from tests.fixtures import ControlPlane
from tests.worker import FakeWorker


def expire_tokens(path: str) -> None:
    with sqlite3.connect(path, timeout=10) as db:
        db.execute("UPDATE bootstrap_tokens SET expires_at = ?", (time.time() - 1,))


async def token(control: ControlPlane, **body: Any) -> str:
    status, reply = await control.admin("POST", "/v1/join-tokens", body or None)
    assert status == 201, reply
    return str(reply["token"])


async def registered(control: ControlPlane, hostname: str = "w1") -> FakeWorker:
    worker = FakeWorker.with_token(control.url, control.session, await token(control))
    reply = await worker.register(hostname)
    assert reply.status == 201, reply.body
    return worker


async def event_count(control: ControlPlane) -> int:
    status, body = await control.admin("GET", "/v1/events?limit=1000")
    assert status == 200
    return len(body["events"])


async def server(control: ControlPlane, server_id: str) -> dict[str, Any]:
    status, body = await control.admin("GET", f"/v1/servers/{server_id}")
    assert status == 200, body
    return body


async def test_register_creates_an_active_worker_whose_id_is_the_server_id(
    control: ControlPlane,
) -> None:
    worker = FakeWorker.with_token(control.url, control.session, await token(control))
    reply = await worker.register("host-a")
    assert reply.status == 201
    assert set(reply.body) == {"worker_id", "secret", "heartbeat_interval"}
    assert len(reply.body["secret"]) >= 43  # 32 random bytes, URL-safe base64
    _status, listing = await control.admin("GET", "/v1/servers")
    assert [s["id"] for s in listing["servers"]] == [reply.body["worker_id"]]
    srv = listing["servers"][0]
    assert srv["status"] == "active"
    assert srv["hostname"] == "host-a"
    assert srv["last_heartbeat_age"] is None
    assert srv["generation"] == 1
    assert srv["capacity"]["memory_mb"] == {"used": 0, "total": 8192 - 512}  # less the reserve


async def test_database_holds_no_token_or_worker_secret_in_plaintext(control: ControlPlane) -> None:
    tok = await token(control)
    worker = FakeWorker.with_token(control.url, control.session, tok)
    await worker.register()
    raw = open(control.settings.database_path, "rb").read()
    for wal in (control.settings.database_path + "-wal",):
        try:
            raw += open(wal, "rb").read()
        except FileNotFoundError:
            pass
    assert tok.split(".")[1].encode() not in raw
    assert worker.secret.encode() not in raw


async def test_heartbeat_updates_age_and_returns_generation(control: ControlPlane) -> None:
    worker = await registered(control)
    reply = await worker.heartbeat()
    assert reply.status == 200
    assert reply.body["generation"] == 1
    assert 9 <= reply.body["heartbeat_interval"] <= 11
    srv = await server(control, worker.key_id)
    assert srv["last_heartbeat_age"] is not None and srv["last_heartbeat_age"] < 5


@pytest.mark.parametrize(
    ("case", "kwargs"),
    [
        ("replay", None),
        ("stale", {"ts_offset": -301}),
        ("future", {"ts_offset": 302}),
        ("tampered", {"tamper": lambda b: b.replace(b"0.1.0", b"6.6.6")}),
        ("short nonce", {"nonce": "ab" * 8 + "0"}),
        ("non-hex nonce", {"nonce": "z" * 32}),
    ],
)
async def test_bad_heartbeats_get_401_and_write_nothing(
    control: ControlPlane, case: str, kwargs: dict[str, Any] | None
) -> None:
    worker = await registered(control)
    first = await worker.heartbeat()
    assert first.status == 200
    db = control.settings.database_path
    before = await asyncio.to_thread(agent_writes, db)
    if kwargs is None:
        reply = await worker.replay()
    else:
        if "ts_offset" in kwargs:
            kwargs = {"timestamp": int(time.time()) + kwargs["ts_offset"]}
        reply = await worker.request(
            "POST",
            "/v1/agent/heartbeat",
            {
                "agent_version": "0.1.0",
                "applied_generation": 0,
                "containers": [],
                "resources": {"cpus": 1, "memory_mb": 1, "disk_gb": 1},
            },
            **kwargs,
        )
    assert reply.status == 401, (case, reply.body)
    assert reply.body["error"]["code"]
    # The exact last_heartbeat (a float), the report, the nonces and the events: a
    # write of any of them shows, without waiting for a clock to move.
    assert await asyncio.to_thread(agent_writes, db) == before


@pytest.mark.parametrize(
    ("offset", "fraction", "status"),
    [
        (-300, 0.999, 200),  # exactly 300 whole seconds old, late in that second
        (300, 0.999, 200),
        (-301, 0.0, 401),
        (301, 0.999, 401),
    ],
)
async def test_timestamp_exactly_300s_away_is_accepted_in_whole_seconds(
    control: ControlPlane, offset: int, fraction: float, status: int
) -> None:
    worker = await registered(control)
    now = int(time.time())
    control.app[FLEET].auth.clock = lambda: now + fraction
    reply = await worker.request(
        "POST",
        "/v1/agent/heartbeat",
        {
            "agent_version": "0.1.0",
            "applied_generation": 0,
            "containers": [],
            "resources": {"cpus": 4, "memory_mb": 8192, "disk_gb": 80},
        },
        timestamp=now + offset,
    )
    assert reply.status == status, reply.body


@pytest.mark.parametrize(
    ("timestamp", "now", "fresh"),
    [
        (1000, 1300.0, True),
        (1000, 1300.999, True),
        (1000, 1301.0, False),
        (1300, 1000.5, True),
        (1301, 1000.0, False),
        (1000, 1000.0, True),
    ],
)
def test_freshness_is_whole_seconds(timestamp: int, now: float, fresh: bool) -> None:
    assert signing.is_fresh(timestamp, now) is fresh


async def test_wrong_key_and_missing_headers_are_401(control: ControlPlane) -> None:
    worker = await registered(control)
    forged = FakeWorker(control.url, control.session, worker.key_id, "x" * 43)
    assert (await forged.heartbeat()).status == 401
    stranger = FakeWorker(control.url, control.session, "srv-doesnotexist", "x" * 43)
    reply = await stranger.heartbeat()
    assert reply.status == 401 and reply.body["error"]["code"] == "unknown_worker"
    async with control.session.post(control.url + "/v1/agent/heartbeat", json={}) as r:
        assert r.status == 401
        assert (await r.json())["error"]["code"] == "missing_signature"


async def test_replay_is_rejected_after_a_control_plane_restart(control: ControlPlane) -> None:
    worker = await registered(control)
    assert (await worker.heartbeat()).status == 200
    await control.stop()
    await control.start()
    reply = await worker.replay()
    assert reply.status == 401
    assert reply.body["error"]["code"] == "replayed_request"
    assert (await worker.heartbeat()).status == 200


async def test_bootstrap_token_is_single_use(
    control: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    tok = await token(control)
    first = FakeWorker.with_token(control.url, control.session, tok)
    assert (await first.register()).status == 201
    thief = FakeWorker.with_token(control.url, control.session, tok)
    reply = await thief.register("thief")
    assert reply.status == 401
    assert reply.body["error"]["code"] == "token_used"
    _status, listing = await control.admin("GET", "/v1/servers")
    assert len(listing["servers"]) == 1
    assert "possible theft" in caplog.text
    assert tok.split(".")[1] not in caplog.text


async def test_concurrent_registrations_with_one_token_yield_one_worker(
    control: ControlPlane,
) -> None:
    tok = await token(control)
    workers = [FakeWorker.with_token(control.url, control.session, tok) for _ in range(5)]
    replies = await asyncio.gather(*(w.register(f"h{i}") for i, w in enumerate(workers)))
    assert sorted(r.status for r in replies) == [201, 401, 401, 401, 401]
    _, listing = await control.admin("GET", "/v1/servers")
    assert len(listing["servers"]) == 1


async def test_expired_token_is_rejected(control_factory: Callable[..., ControlPlane]) -> None:
    control = control_factory()
    await control.start()
    status, body = await control.admin("POST", "/v1/join-tokens", {"ttl_seconds": 60})
    assert status == 201
    tok = body["token"]
    # Expire it the way time would: move its deadline into the past in the database.
    # (In a thread: a blocking write on the event loop would deadlock with the app's.)
    await asyncio.to_thread(expire_tokens, control.settings.database_path)
    reply = await FakeWorker.with_token(control.url, control.session, tok).register()
    assert reply.status == 401
    assert reply.body["error"]["code"] == "token_expired"


async def test_token_cannot_sign_anything_but_registration(control: ControlPlane) -> None:
    tok = await token(control)
    as_token = FakeWorker.with_token(control.url, control.session, tok)
    assert (await as_token.heartbeat()).status == 401
    assert (await as_token.assignments()).status == 401
    # The token is still good for what it is for.
    assert (await as_token.register()).status == 201


async def test_worker_secret_cannot_register(control: ControlPlane) -> None:
    worker = await registered(control)
    reply = await worker.register("again")
    assert reply.status == 401


async def test_worker_only_sees_its_own_assignments(control: ControlPlane) -> None:
    a = await registered(control, "a")
    b = await registered(control, "b")
    status, _ = await control.admin("POST", "/v1/users", {"user_id": "alice", "subdomain": "alice"})
    assert status == 201
    _, alice = await control.admin("GET", "/v1/users/alice")
    owner, other = (a, b) if alice["server_id"] == a.key_id else (b, a)
    mine = await owner.assignments()
    assert mine.status == 200
    assert [c["user_id"] for c in mine.body["containers"]] == ["alice"]
    theirs = await other.assignments()
    assert theirs.status == 200 and theirs.body["containers"] == []
    # Other's secret with owner's key id: a signature that does not verify.
    impostor = FakeWorker(control.url, control.session, owner.key_id, other.secret)
    assert (await impostor.assignments()).status == 401


async def test_assignment_spec_has_the_contract_fields(control: ControlPlane) -> None:
    worker = await registered(control)
    await control.admin("POST", "/v1/users", {"user_id": "alice", "subdomain": "alice"})
    reply = await worker.assignments()
    spec = reply.body["containers"][0]
    for name in (
        "user_id",
        "name",
        "image",
        "user",
        "command",
        "env",
        "ports",
        "volumes",
        "resources",
        "health",
        "labels",
        "hostname",
        "spec_hash",
    ):
        assert name in spec, name
    assert spec["user"] == "1000:1000"
    assert spec["health"] == {"path": "/healthz", "port": 18789}
    assert spec["resources"] == {"memory_mb": 1024, "cpus": 0.5, "pids": 512}
    assert spec["route_host"] == "alice.clawfleet.localhost"
    assert reply.body["generation"] == 2


async def test_long_poll_wakes_on_change_and_304s_on_timeout(control: ControlPlane) -> None:
    worker = await registered(control)
    # A real second: `wait` is a whole number of seconds in the protocol (docs/protocol.md),
    # and this pins the route's 304 after it, not only the function's None.
    timed_out = await worker.assignments(after=1, wait=1)
    assert timed_out.status == 304
    poll = asyncio.create_task(worker.assignments(after=1, wait=30))
    assert control.app is not None
    board = control.app[FLEET].board
    await asyncio.wait_for(board.until_parked(worker.key_id), 30)
    assert not poll.done()
    await control.admin("POST", "/v1/users", {"user_id": "bob", "subdomain": "bob"})
    # Woken by the change: the poll's own 30 s would answer 304, not the new set
    # (latency itself is measured in bench/).
    reply = await asyncio.wait_for(poll, 30)
    assert reply.status == 200
    assert reply.body["generation"] == 2
    assert [c["user_id"] for c in reply.body["containers"]] == ["bob"]


async def test_a_held_long_poll_is_answered_503_when_the_control_plane_stops(
    control: ControlPlane,
) -> None:
    """Not 304: a 304 sends every agent back at once, to a replica that stays, with polls
    that would all renew in the same second for ever; a failure makes each draw its own
    wait (agent/client.py `poll_wait`)."""
    worker = await registered(control)
    poll = asyncio.create_task(worker.assignments(after=1, wait=30))
    assert control.app is not None
    board = control.app[FLEET].board
    await asyncio.wait_for(board.until_parked(worker.key_id), 30)
    board.close()  # what the shutdown does first (control/api/agent_wakes.py)
    reply = await asyncio.wait_for(poll, 30)
    assert reply.status == 503
    assert reply.body["error"]["code"] == "service_unavailable"
    assert "shutting down" in reply.body["error"]["message"]


async def test_generation_increases_on_every_change_and_reply_is_the_full_set(
    control: ControlPlane,
) -> None:
    worker = await registered(control)
    for name in ("u1", "u2"):
        await control.admin("POST", "/v1/users", {"user_id": name, "subdomain": name})
    first = await worker.assignments()
    assert first.body["generation"] == 3
    assert sorted(c["user_id"] for c in first.body["containers"]) == ["u1", "u2"]
    status, body = await control.admin("DELETE", "/v1/users/u1")
    assert status == 200 and body["state"] == "deprovisioned"
    second = await worker.assignments(after=3)
    assert second.body["generation"] == 4
    assert [c["user_id"] for c in second.body["containers"]] == ["u2"]


async def test_user_becomes_running_when_its_container_reports_healthy(
    control: ControlPlane,
) -> None:
    worker = await registered(control)
    await control.admin("POST", "/v1/users", {"user_id": "carol", "subdomain": "carol"})
    _, user = await control.admin("GET", "/v1/users/carol")
    assert user["state"] == "provisioning"
    report = {
        "user_id": "carol",
        "state": "running",
        "health": "starting",
        "image_id": "sha256:x",
        "started_at": "2026-11-27T00:00:00Z",
        "restart_count": 0,
        "error": None,
    }
    await worker.heartbeat([report], generation=2)
    _, user = await control.admin("GET", "/v1/users/carol")
    assert user["state"] == "provisioning"
    await worker.heartbeat([{**report, "health": "healthy"}], generation=2)
    _, user = await control.admin("GET", "/v1/users/carol")
    assert user["state"] == "running"
    assert user["container"]["health"] == "healthy"
    srv = await server(control, worker.key_id)
    assert srv["containers_desired"] == 1 and srv["containers_running"] == 1
    assert srv["applied_generation"] == 2


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "malformed"),
        (
            b'{"agent_version": "1", "applied_generation": "2", "resources": {"cpus": 1, "memory_mb": 1, "disk_gb": 1}, "containers": []}',
            "applied_generation",
        ),
        (b'{"agent_version": "1", "applied_generation": 2, "containers": []}', "resources"),
        (
            b'{"agent_version": "1", "applied_generation": 2, "resources": {"cpus": true, "memory_mb": 1, "disk_gb": 1}, "containers": []}',
            "cpus",
        ),
        (b"[]", "malformed"),
    ],
)
async def test_malformed_heartbeat_is_400_and_writes_nothing(
    control: ControlPlane, body: bytes, fragment: str
) -> None:
    worker = await registered(control)
    reply = await worker.request("POST", "/v1/agent/heartbeat", raw_body=body)
    assert reply.status == 400
    assert fragment in reply.body["error"]["message"]
    srv = await server(control, worker.key_id)
    assert srv["last_heartbeat_age"] is None


async def test_malformed_registration_leaves_the_token_usable(control: ControlPlane) -> None:
    worker = FakeWorker.with_token(control.url, control.session, await token(control))
    bad = await worker.register(resources={"cpus": "4", "memory_mb": 1, "disk_gb": 1})
    assert bad.status == 400
    assert (await worker.register()).status == 201


async def test_oversize_body_is_413(control: ControlPlane) -> None:
    worker = await registered(control)
    reply = await worker.request("POST", "/v1/agent/heartbeat", raw_body=b"x" * (1024 * 1024 + 1))
    assert reply.status == 413
    assert reply.body["error"]["code"] == "payload_too_large"
    status, _body = await control.admin(
        "POST", "/v1/users", {"user_id": "a", "subdomain": "a" * 10, "pad": "x" * (1024 * 1024)}
    )
    assert status == 413


async def test_healthz_needs_no_auth(control: ControlPlane) -> None:
    async with control.session.get(control.url + "/healthz") as r:
        assert r.status == 200
        assert (await r.json())["status"] == "ok"


def agent_writes(path: str) -> tuple[Any, ...]:
    """Everything an agent request may write."""
    with sqlite3.connect(path, timeout=10) as db:
        return tuple(
            tuple(db.execute(sql).fetchall())
            for sql in (
                "SELECT id, status, last_heartbeat, agent_version, applied_generation, cpus, "
                "memory_mb, disk_gb, report, hostname, generation FROM servers ORDER BY id",
                "SELECT id, consumed_at FROM bootstrap_tokens ORDER BY id",
                "SELECT key_id, nonce FROM nonces ORDER BY key_id, nonce",
                "SELECT COUNT(*) FROM events WHERE server_id IS NOT NULL",
            )
        )


def nonce_rows(path: str, key_id: str) -> int:
    with sqlite3.connect(path, timeout=10) as db:
        row = db.execute("SELECT COUNT(*) FROM nonces WHERE key_id = ?", (key_id,)).fetchone()
        return int(row[0])


def set_status(path: str, server_id: str, status: str) -> None:
    with sqlite3.connect(path, timeout=10) as db:
        db.execute("UPDATE servers SET status = ? WHERE id = ?", (status, server_id))


def signed(
    worker: FakeWorker, method: str, path: str, query: str, body: bytes = b""
) -> dict[str, str]:
    """Headers for exactly this raw query (FakeWorker.request signs a canonical one)."""
    ts, nonce = str(int(time.time())), signing.new_nonce()
    canonical = signing.canonical_string(method, path, query, ts, nonce, worker.key_id, body)
    return {
        signing.HEADER_KEY: worker.key_id,
        signing.HEADER_TIMESTAMP: ts,
        signing.HEADER_NONCE: nonce,
        signing.HEADER_SIGNATURE: signing.signature(worker.secret, canonical),
    }


@pytest.mark.parametrize("status", ["dead", "deleting", "deleted"])
@pytest.mark.parametrize("call", ["assignments", "heartbeat"])
async def test_revoked_worker_is_refused_and_writes_nothing(
    control: ControlPlane, status: str, call: str
) -> None:
    worker = await registered(control)
    # A first request caches the worker's secret: later ones rely on the handler's check.
    assert (await worker.heartbeat()).status == 200
    db = control.settings.database_path
    await asyncio.to_thread(set_status, db, worker.key_id, status)
    nonces_before = await asyncio.to_thread(nonce_rows, db, worker.key_id)
    events_before = await event_count(control)
    reply = await (worker.assignments() if call == "assignments" else worker.heartbeat())
    assert reply.status == 403, reply.body
    assert reply.body["error"]["code"] == "worker_revoked"
    assert await asyncio.to_thread(nonce_rows, db, worker.key_id) == nonces_before
    assert await event_count(control) == events_before


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (signing.HEADER_SIGNATURE, "é"),
        (signing.HEADER_SIGNATURE, "é" * 64),
        (signing.HEADER_SIGNATURE, "A" * 64),  # upper case: one spelling per signature
        (signing.HEADER_NONCE, "é" * 32),
        (signing.HEADER_TIMESTAMP, "١٧٩٥٠٠٠٠٠٠"),  # digits, but not ASCII ones
        (signing.HEADER_KEY, "srv-é1234"),
        (signing.HEADER_KEY, "ABCDEFG"),
    ],
)
@pytest.mark.parametrize("endpoint", ["register", "heartbeat"])
async def test_malformed_signed_headers_are_401_never_500(
    control: ControlPlane, header: str, value: str, endpoint: str
) -> None:
    if endpoint == "register":
        worker = FakeWorker.with_token(control.url, control.session, await token(control))
        body: dict[str, Any] = {"protocol": 1, "agent_version": "0.1.0", "hostname": "h"}
        body["resources"] = {"cpus": 1, "memory_mb": 1024, "disk_gb": 10}
    else:
        worker = await registered(control)
        body = {"agent_version": "0.1.0", "applied_generation": 0, "containers": []}
        body["resources"] = {"cpus": 1, "memory_mb": 1024, "disk_gb": 10}
    reply = await worker.request("POST", f"/v1/agent/{endpoint}", body, headers={header: value})
    assert reply.status == 401, reply.body


@pytest.mark.parametrize("valid_first", [True, False])
async def test_a_signed_header_sent_twice_is_401(control: ControlPlane, valid_first: bool) -> None:
    worker = await registered(control)
    headers = signed(worker, "GET", "/v1/agent/assignments", "")
    copies = [headers[signing.HEADER_SIGNATURE], "0" * 64]
    listed = [(k, v) for k, v in headers.items() if k != signing.HEADER_SIGNATURE]
    listed += [(signing.HEADER_SIGNATURE, v) for v in (copies if valid_first else copies[::-1])]
    db = control.settings.database_path
    before = await asyncio.to_thread(nonce_rows, db, worker.key_id)
    async with control.session.get(
        control.url + "/v1/agent/assignments", headers=CIMultiDict(listed)
    ) as r:
        assert r.status == 401
    assert await asyncio.to_thread(nonce_rows, db, worker.key_id) == before


async def test_duplicate_query_parameters_are_400_and_write_nothing(control: ControlPlane) -> None:
    worker = await registered(control)
    db = control.settings.database_path
    before = await asyncio.to_thread(nonce_rows, db, worker.key_id)
    query = "after=0&after=5"
    headers = signed(worker, "GET", "/v1/agent/assignments", query)
    reply = await worker.send("GET", "/v1/agent/assignments?" + query, headers, b"")
    assert reply.status == 400, reply.body
    assert reply.body["error"]["code"] == "duplicate_parameter"
    assert "after" in reply.body["error"]["message"]
    assert await asyncio.to_thread(nonce_rows, db, worker.key_id) == before
    # One value each is still fine.
    assert (await worker.assignments(after=0)).status == 200


@pytest.mark.parametrize("timestamp", [1000, 1_795_000_000])
def test_a_nonce_is_remembered_exactly_while_its_timestamp_is_fresh(timestamp: int) -> None:
    # Forgotten any earlier, a replay would pass; any later only costs memory.
    assert signing.is_fresh(timestamp, nonces.expiry(timestamp) - 0.001)
    assert not signing.is_fresh(timestamp, nonces.expiry(timestamp))


def test_revoked_is_exactly_retired() -> None:
    # auth.py names servers.py's retired statuses for the requests it refuses: one meaning.
    assert set(REVOKED_STATUSES) == set(servers.RETIRED_STATUSES)
