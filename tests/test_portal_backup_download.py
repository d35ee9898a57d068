"""A customer downloads a backup of their own agent (docs/portal.md, "Downloading a
backup"), against the real restic binary and a real S3 server (moto, tests/s3server.py):
the snapshot is made as the agent makes it (agent/backups.py's Restic with the
keyring's password) and recorded through the heartbeat's own report path
(control/backup_jobs/reports.py); the portal streams it as a tar archive that is
untarred and compared. Then every refusal: another customer's user, another user's
snapshot, a forgotten one, backups off, the limits, the timeout, a client that goes
away (its restic is gone)."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import shutil
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.backups import Repository, Restic
from agent.restic_output import Summary
from control.appkeys import FLEET, STORE
from control.backup_jobs import records, reports
from control.backups.repository import repository_url
from control.db.store import Store
from control.portal.backup_download import DOWNLOADS
from control.portal.backup_download_stream import Downloads, refusal
from shared.protocol import BackupReport
from tests.backup_state import change_one_file, make_state
from tests.dashboard.http import Reply, call
from tests.fakes.stripe_api import StripeFake, stripe_fake_fixture  # noqa: F401
from tests.fixtures import ControlPlane
from tests.portal_customers import (
    Inbox,
    Signed,
    add_customer,
    portal_plane,
    sign_in,
    smtp,  # noqa: F401
)
from tests.s3server import ACCESS_KEY, S3, SECRET_KEY, s3_server

pytestmark = pytest.mark.skipif(
    shutil.which("restic") is None and os.environ.get("CI") != "true",
    reason="restic is not installed (apt-get install restic; .ci/run does)",
)
BACKUPS = "/portal/api/account/agents/{}/backups"
BUCKET = "clawfleet-portal-test"


@pytest.mark.parametrize(
    ("active", "who", "cap", "expected"),
    [
        (set(), "a@x", 3, None),
        ({"b@x"}, "a@x", 3, None),
        ({"a@x"}, "a@x", 3, "yours"),  # one per customer, even with room
        ({"b@x", "c@x", "d@x"}, "a@x", 3, "busy"),
        ({"a@x", "b@x", "c@x"}, "a@x", 3, "yours"),
        ({"b@x"}, "a@x", 1, "busy"),
        (set(), "a@x", 0, "busy"),
    ],
)
def test_who_may_start_a_download(active: set[str], who: str, cap: int, expected: Any) -> None:
    assert refusal(active, who, cap) == expected


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with s3_server() as server:
        yield server


@pytest.fixture
def inbox(smtp: tuple[Inbox, int]) -> Inbox:  # noqa: F811
    return smtp[0]


@pytest.fixture
def make_plane(
    control_factory: Callable[..., ControlPlane],
    smtp: tuple[Inbox, int],  # noqa: F811
    stripe_fake: StripeFake,
    s3: S3,
) -> Callable[..., Any]:
    async def start(backups: bool = True) -> ControlPlane:
        more: dict[str, Any] = {"cluster_name": "t" + uuid.uuid4().hex[:12]}
        if backups:
            more |= {
                "backup_s3_endpoint": s3.endpoint,
                "backup_s3_bucket": BUCKET,
                "backup_s3_access_key": ACCESS_KEY,
                "backup_s3_secret_key": SECRET_KEY,
            }
        plane = portal_plane(control_factory, smtp[1], stripe_fake, **more)
        await plane.start()
        await add_customer(plane, "alice", "alice@example.com")
        await add_customer(plane, "bob", "bob@example.com")
        return plane

    return start


def restic_of(plane: ControlPlane, user_id: str) -> Restic:
    """The user's repository exactly as a worker's job describes it."""
    assert plane.app is not None
    fleet = plane.app[FLEET]
    s = fleet.settings
    url = repository_url(s.backup_s3_endpoint, s.backup_s3_bucket, s.cluster_name, user_id)
    password = fleet.keyring.backup_password(user_id)
    return Restic(Repository(url, password, s.backup_s3_access_key, s.backup_s3_secret_key))


async def recorded(
    plane: ControlPlane,
    user_id: str,
    snapshot_id: str,
    added: int,
    kept: list[str] | None = None,
    now: float | None = None,
) -> str:
    """A snapshot job given to a worker, then its `done` report through the heartbeat's
    path, both at `now`."""
    assert plane.app is not None
    store: Store = plane.app[STORE]
    now = time.time() if now is None else now

    async def create(conn: Any) -> str:
        return await records.create(
            conn,
            user_id=user_id,
            kind="snapshot",
            reason="scheduled",
            server_id="srv-1",
            volume_id="vol-1",
            now=now,
        )

    job = await store.write(create)
    done = BackupReport(
        id=job, state="done", snapshot_id=snapshot_id, bytes_added=added, kept=kept or []
    )
    assert await store.write(lambda c: reports.record(c, "srv-1", [done], now)) is True
    return job


async def snapshot(plane: ControlPlane, user_id: str, state: Path) -> Summary:
    restic = restic_of(plane, user_id)
    await restic.init_if_missing()
    summary = await restic.snapshot(state, ("clawfleet", "reason:scheduled"))
    await recorded(plane, user_id, summary.snapshot_id, summary.data_added)
    return summary


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def untarred(body: bytes, into: Path) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:") as archive:
        archive.extractall(into, filter="data")
    return tree(into)


async def fetch(plane: ControlPlane, who: Signed, path: str) -> tuple[int, dict[str, str], bytes]:
    async with plane.session.get(plane.url + path, headers=who.headers(csrf=False)) as r:
        return r.status, dict(r.headers), await r.read()


def code_of(reply: Reply) -> str:
    return str(reply.json()["error"]["code"])


async def test_she_downloads_the_snapshot_she_picks_as_a_tar_of_its_files(
    make_plane: Callable[..., Any], inbox: Inbox, tmp_path: Path
) -> None:
    plane = await make_plane()
    alice = await sign_in(plane, inbox, "alice@example.com")
    state = tmp_path / "state"
    make_state(state, 400 * 1024)
    (state / "credentials" / "token.json").write_text('{"key": "hers"}')
    before = tree(state)
    first = await snapshot(plane, "alice", state)
    change_one_file(state)
    second = await snapshot(plane, "alice", state)

    listed = await call(plane, "GET", BACKUPS.format("alice"), headers=alice.headers(False))
    assert listed.status == 200, listed.text
    assert listed.json()["backups_enabled"] is True
    snaps = listed.json()["snapshots"]
    assert [(s["id"], s["bytes_added"]) for s in snaps] == [
        (second.snapshot_id, second.data_added),
        (first.snapshot_id, first.data_added),
    ]  # newest first
    path = BACKUPS.format("alice") + f"/{first.snapshot_id}/download"
    status, headers, body = await fetch(plane, alice, path)
    assert status == 200, body[:300]
    assert headers["Content-Type"] == "application/x-tar"
    disposition = headers["Content-Disposition"]
    assert (
        disposition.startswith('attachment; filename="alice-') and first.snapshot_id in disposition
    )
    assert headers["Cache-Control"] == "no-store" and "Content-Length" not in headers  # streamed
    assert untarred(body, tmp_path / "got") == before  # that point in time, not the latest
    assert plane.app is not None and not plane.app[DOWNLOADS].active


async def test_only_her_own_listed_snapshots_and_nothing_before_restic_runs(
    make_plane: Callable[..., Any], inbox: Inbox, tmp_path: Path
) -> None:
    plane = await make_plane()
    assert plane.app is not None
    plane.app[DOWNLOADS].binary = str(tmp_path / "no-restic")  # a run would be a 503
    alice = await sign_in(plane, inbox, "alice@example.com")
    at = time.time()
    await recorded(plane, "alice", "01d01d00", 10, now=at)
    await recorded(plane, "alice", "aaaa0001", 10, now=at + 1)
    await recorded(plane, "bob", "b0b0b0b0", 10, now=at + 1)
    # Its prune kept aaaa0001 only: 01d01d00 is forgotten, as a worker's report says.
    await recorded(plane, "alice", "aaaa0002", 10, kept=["aaaa0001"], now=at + 2)

    def get(user_id: str, suffix: str = "") -> Any:
        return call(plane, "GET", BACKUPS.format(user_id) + suffix, headers=alice.headers(False))

    for user_id in ("bob", "nobody", ".."):
        for suffix in ("", "/b0b0b0b0/download", "/aaaa0001/download"):
            reply = await get(user_id, suffix)
            assert reply.status == 404, (user_id, suffix, reply.text)
            assert "b0b0b0b0" not in reply.text
    for snapshot_id, code in [
        ("b0b0b0b0", "unknown_snapshot"),  # bob's, through her own user
        ("01d01d00", "snapshot_forgotten"),
        ("ffffffff", "unknown_snapshot"),
        ("AAAA0001", "unknown_snapshot"),
        ("aaaa00", "unknown_snapshot"),
    ]:
        reply = await get("alice", f"/{snapshot_id}/download")
        assert reply.status == 400 and code_of(reply) == code, (snapshot_id, reply.text)
    listed = (await get("alice")).json()["snapshots"]
    assert [s["id"] for s in listed] == ["aaaa0002", "aaaa0001"]
    signed_out = await call(plane, "GET", BACKUPS.format("alice") + "/aaaa0001/download")
    assert signed_out.status == 401
    head = await call(plane, "HEAD", BACKUPS.format("alice") + "/aaaa0001/download")
    assert head.status == 405  # a HEAD would run restic for nothing
    # Her own listed snapshot passes every check: only then is restic run (here: missing).
    reply = await get("alice", "/aaaa0001/download")
    assert reply.status == 503 and code_of(reply) == "backup_download_failed", reply.text


async def test_backups_off_lists_none_and_a_download_is_409(
    make_plane: Callable[..., Any], inbox: Inbox
) -> None:
    plane = await make_plane(backups=False)
    alice = await sign_in(plane, inbox, "alice@example.com")
    await recorded(plane, "alice", "aaaa0001", 10)
    listed = await call(plane, "GET", BACKUPS.format("alice"), headers=alice.headers(False))
    assert listed.json() == {"backups_enabled": False, "snapshots": []}
    path = BACKUPS.format("alice") + "/aaaa0001/download"
    reply = await call(plane, "GET", path, headers=alice.headers(False))
    assert reply.status == 409 and code_of(reply) == "backups_off", reply.text
    bob = await call(plane, "GET", BACKUPS.format("bob"), headers=alice.headers(False))
    assert bob.status == 404  # ownership first: the refusal says nothing of bob


async def test_a_restic_failure_before_any_byte_is_a_503_that_names_no_secret(
    make_plane: Callable[..., Any], inbox: Inbox, caplog: pytest.LogCaptureFixture
) -> None:
    plane = await make_plane()
    alice = await sign_in(plane, inbox, "alice@example.com")
    await restic_of(plane, "alice").init_if_missing()
    await recorded(plane, "alice", "deadbeef", 10)  # listed, but not in the repository
    caplog.set_level(logging.INFO)
    path = BACKUPS.format("alice") + "/deadbeef/download"
    reply = await call(plane, "GET", path, headers=alice.headers(False))
    assert reply.status == 503 and code_of(reply) == "backup_download_failed", reply.text
    assert plane.app is not None
    password = plane.app[FLEET].keyring.backup_password("alice")
    assert "deadbeef" in caplog.text and "restic:" in caplog.text
    for secret in (password, SECRET_KEY, ACCESS_KEY):
        assert secret not in caplog.text and secret not in reply.text


def restic_dumps(cluster: str) -> list[int]:
    """The pids of restic processes dumping from this plane's repositories."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"dump" in argv and any(cluster.encode() in part for part in argv):
            found.append(int(proc.name))
    return found


async def big_snapshot(plane: ControlPlane, user_id: str, tmp_path: Path) -> str:
    """More than every buffer between restic and a client that stops reading holds."""
    state = tmp_path / f"big-{user_id}"
    state.mkdir()
    (state / "blob").write_bytes(os.urandom(24 * 1024 * 1024))
    return (await snapshot(plane, user_id, state)).snapshot_id


async def test_limits_and_a_client_that_goes_away_stops_its_restic(
    make_plane: Callable[..., Any], inbox: Inbox, tmp_path: Path
) -> None:
    plane = await make_plane()
    assert plane.app is not None
    limits: Downloads = plane.app[DOWNLOADS]
    limits.cap = 1
    alice = await sign_in(plane, inbox, "alice@example.com")
    bob = await sign_in(plane, inbox, "bob@example.com")
    snap = await big_snapshot(plane, "alice", tmp_path)
    await recorded(plane, "bob", "b0b0b0b0", 10)
    path = BACKUPS.format("alice") + f"/{snap}/download"
    cluster = plane.settings.cluster_name
    async with aiohttp.ClientSession() as client:
        started = await client.get(plane.url + path, headers=alice.headers(False))
        assert started.status == 200
        assert len(await started.content.readexactly(1024)) == 1024
        (pid,) = restic_dumps(cluster)
        again = await call(plane, "GET", path, headers=alice.headers(False))
        assert again.status == 429 and again.headers["Retry-After"] == "60", again.text
        assert "one at a time" in again.text
        other = BACKUPS.format("bob") + "/b0b0b0b0/download"
        busy = await call(plane, "GET", other, headers=bob.headers(False))
        assert busy.status == 429 and "too many" in busy.text
        started.close()  # she goes away mid-download
    await asyncio.wait_for(limits.wait_idle(), 30)
    assert not Path(f"/proc/{pid}").exists() and restic_dumps(cluster) == []
    status, _, body = await fetch(plane, alice, path)  # her slot is free again
    assert status == 200 and len(body) > 24 * 1024 * 1024


async def test_a_download_past_its_timeout_ends_incomplete(
    make_plane: Callable[..., Any], inbox: Inbox, tmp_path: Path
) -> None:
    plane = await make_plane()
    assert plane.app is not None
    limits: Downloads = plane.app[DOWNLOADS]
    limits.timeout = 2.0
    alice = await sign_in(plane, inbox, "alice@example.com")
    snap = await big_snapshot(plane, "alice", tmp_path)
    path = BACKUPS.format("alice") + f"/{snap}/download"
    async with aiohttp.ClientSession() as client:
        async with client.get(plane.url + path, headers=alice.headers(False)) as reply:
            assert reply.status == 200
            await reply.content.readexactly(1024)
            # Reads nothing more: the server's timeout ends it, restic is stopped.
            await asyncio.wait_for(limits.wait_idle(), 30)
            assert restic_dumps(plane.settings.cluster_name) == []
            with pytest.raises(aiohttp.ClientPayloadError):
                await reply.read()  # the chunked body never ends: not a complete tar
