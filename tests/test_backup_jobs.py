"""Backup jobs through the whole control plane (issue 13, docs/backups.md): the
autoscaler's runs against the fake Hetzner API, workers as signed fake agents that pull
their jobs with the assignments and report them in heartbeats. The invariants: a job
goes only to the worker where the user's volume is mounted, a worker's report touches
only the jobs it was given, a restore keeps the user's container away until it ends,
and a cancelled user's volume is deleted only after its final snapshot."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from control.appkeys import FLEET, SCALER
from control.keyring import Keyring
from tests.database import execute
from tests.fakes.hetzner import HetznerFake, agent_dist, fleet_settings, provider_with_timeout
from tests.fixtures import ControlPlane
from tests.test_autoscaler import add_users, event_kinds, run
from tests.test_cli import cli, parse_table
from tests.test_protocol import token
from tests.test_volumes_fleet import beat, placed_with_volume, specs, volume_row
from tests.worker import FakeWorker

Start = Any
BACKUPS = {
    "backup_s3_endpoint": "http://127.0.0.1:9",
    "backup_s3_bucket": "clawfleet-test",
    "backup_s3_access_key": "access-key",
    "backup_s3_secret_key": "secret-key-0123456789",
}
SNAP1 = "a1b2c3d4e5f60718"
SNAP2 = "ffee0011ffee0011"


@pytest.fixture
def backed_up(control_factory: Any, hetzner_fake: HetznerFake, tmp_path: Path) -> Start:
    """test_volumes_fleet.py's control plane (volumes on), with backups configured."""
    dist = agent_dist(tmp_path / "dist")

    async def start(**overrides: Any) -> ControlPlane:
        settings = fleet_settings(hetzner_fake, dist) | {"user_volumes": True} | BACKUPS
        plane: ControlPlane = control_factory(
            provider_with_timeout(2.0, None), **(settings | overrides)
        )
        await plane.start()
        await run(plane)
        return plane

    return start


async def jobs(worker: FakeWorker) -> list[dict[str, Any]]:
    reply = await worker.assignments()
    assert reply.status == 200, reply.body
    return list(reply.body.get("backups", []))


async def listed(control: ControlPlane, user_id: str = "alice") -> dict[str, Any]:
    status, body = await control.admin("GET", f"/v1/users/{user_id}/backups")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def mounted_alice(control: ControlPlane, fake: HetznerFake) -> tuple[FakeWorker, str]:
    worker = await placed_with_volume(control, fake)
    (volume,) = fake.volumes.values()
    vid = str(volume["id"])
    await beat(worker, ["alice"], [vid])
    return worker, vid


async def snapshot_done(
    control: ControlPlane, worker: FakeWorker, vid: str, snapshot_id: str
) -> None:
    """An operator's snapshot, pulled and reported done by the worker."""
    status, body = await control.admin("POST", "/v1/users/alice/backups")
    assert status == 202, body
    job = body["job"]["id"]
    assert [j["id"] for j in await jobs(worker)] == [job]
    done = {"id": job, "state": "done", "snapshot_id": snapshot_id, "bytes_added": 123}
    await beat(worker, ["alice"], [vid], [done])


async def test_a_scheduled_snapshot_goes_to_the_worker_where_the_volume_is_mounted(
    backed_up: Start, hetzner_fake: HetznerFake
) -> None:
    control = await backed_up()
    worker = await placed_with_volume(control, hetzner_fake)
    (volume,) = hetzner_fake.volumes.values()
    vid = str(volume["id"])
    await run(control)
    assert await jobs(worker) == []  # attached but its agent has not mounted it yet
    await beat(worker, ["alice"], [vid])
    await run(control)
    (job,) = await jobs(worker)
    assert job["kind"] == "snapshot" and job["user_id"] == "alice"
    assert job["volume_id"] == vid
    assert job["repository"] == "s3:http://127.0.0.1:9/clawfleet-test/default/alice"
    assert job["password"] == Keyring(control.settings.internal_secret).backup_password("alice")
    assert (job["access_key"], job["secret_key"]) == ("access-key", "secret-key-0123456789")
    assert (job["keep_hourly"], job["keep_daily"], job["keep_weekly"]) == (24, 7, 4)
    assert "reason:scheduled" in job["tags"]
    await run(control)
    assert len(await jobs(worker)) == 1  # in flight: not asked again
    await beat(worker, ["alice"], [vid], [{"id": job["id"], "state": "running"}])
    done = {"id": job["id"], "state": "done", "snapshot_id": SNAP1, "bytes_added": 4096}
    await beat(worker, ["alice"], [vid], [done])
    assert await jobs(worker) == []  # finished: it leaves the worker's assignments
    body = await listed(control)
    assert [(s["id"], s["bytes_added"], s["reason"]) for s in body["snapshots"]] == [
        (SNAP1, 4096, "scheduled")
    ]
    assert body["jobs"][0]["state"] == "done" and body["jobs"][0]["finished_at"]
    await run(control)
    assert await jobs(worker) == []  # not due again before the plan's backup_minutes


async def test_no_job_without_backups_configured(
    backed_up: Start, hetzner_fake: HetznerFake
) -> None:
    control = await backed_up(backup_s3_endpoint="")
    worker, _ = await mounted_alice(control, hetzner_fake)
    await run(control)
    assert await jobs(worker) == []
    status, body = await control.admin("POST", "/v1/users/alice/backups")
    assert (status, body["error"]["code"]) == (409, "backups_off")


async def test_a_report_on_a_job_of_another_worker_changes_nothing(
    backed_up: Start, hetzner_fake: HetznerFake
) -> None:
    control = await backed_up()
    worker, _ = await mounted_alice(control, hetzner_fake)
    await run(control)
    (job,) = await jobs(worker)
    other = FakeWorker.with_token(control.url, control.session, await token(control))
    assert (await other.register("other")).status == 201
    forged = {"id": job["id"], "state": "done", "snapshot_id": SNAP2}
    await beat(other, [], [], [forged, {"id": "job-nonexistent", "state": "failed"}])
    assert [j["id"] for j in await jobs(worker)] == [job["id"]]
    assert (await listed(control))["snapshots"] == []
    assert [j["state"] for j in (await listed(control))["jobs"]] == ["pending"]


async def test_a_new_job_wakes_the_workers_long_poll(
    backed_up: Start, hetzner_fake: HetznerFake
) -> None:
    control = await backed_up()
    worker, _ = await mounted_alice(control, hetzner_fake)
    generation = (await worker.assignments()).body["generation"]
    poll = asyncio.create_task(worker.assignments(after=generation, wait=20))
    assert control.app is not None
    await control.app[FLEET].board.until_parked(worker.key_id)
    status, body = await control.admin("POST", "/v1/users/alice/backups")
    assert status == 202, body
    reply = await asyncio.wait_for(poll, 10)
    assert reply.status == 200
    assert [j["id"] for j in reply.body["backups"]] == [body["job"]["id"]]


async def test_a_restore_keeps_the_container_away_until_it_is_done(
    backed_up: Start, hetzner_fake: HetznerFake
) -> None:
    control = await backed_up()
    worker, vid = await mounted_alice(control, hetzner_fake)
    await snapshot_done(control, worker, vid, SNAP1)
    assert "alice" in await specs(worker)
    status, body = await control.admin("POST", "/v1/users/alice/restore", {"snapshot_id": SNAP1})
    assert status == 202, body
    assert "alice" not in await specs(worker)
    (job,) = await jobs(worker)
    assert (job["kind"], job["snapshot_id"]) == ("restore", SNAP1)
    assert "keep_hourly" not in job  # a restore prunes nothing (0, left out)
    status, again = await control.admin("POST", "/v1/users/alice/backups")
    assert (status, again["error"]["code"]) == (409, "backup_in_flight")
    await beat(worker, [], [vid], [{"id": job["id"], "state": "running"}])
    assert "alice" not in await specs(worker)
    await beat(worker, [], [vid], [{"id": job["id"], "state": "done"}])
    assert "alice" in await specs(worker)
    assert await jobs(worker) == []


async def test_a_failed_restore_gives_the_container_back_and_is_not_retried(
    backed_up: Start, hetzner_fake: HetznerFake
) -> None:
    control = await backed_up()
    worker, vid = await mounted_alice(control, hetzner_fake)
    await snapshot_done(control, worker, vid, SNAP1)
    await control.admin("POST", "/v1/users/alice/restore", {"snapshot_id": SNAP1})
    (job,) = await jobs(worker)
    failed = {"id": job["id"], "state": "failed", "error": "restic: wrong password"}
    await beat(worker, [], [vid], [failed])
    assert "alice" in await specs(worker)
    latest = (await listed(control))["jobs"][0]
    assert (latest["state"], latest["error"], latest["retry_after"]) == (
        "failed",
        "restic: wrong password",
        None,
    )
    assert "backup_requested" in await event_kinds(control)


async def test_a_failed_scheduled_snapshot_is_retried_after_its_backoff(
    backed_up: Start, hetzner_fake: HetznerFake
) -> None:
    control = await backed_up()
    worker, vid = await mounted_alice(control, hetzner_fake)
    await run(control)
    (job,) = await jobs(worker)
    await beat(worker, ["alice"], [vid], [{"id": job["id"], "state": "failed", "error": "x"}])
    await run(control)
    assert await jobs(worker) == []  # within its back-off
    assert control.app is not None
    control.app[SCALER].provisioner.clock = lambda: time.time() + 3600
    await run(control)
    (retry,) = await jobs(worker)
    assert retry["id"] != job["id"]
    assert (await listed(control))["jobs"][0]["attempts"] == 2


async def test_an_operator_need_not_wait_out_a_scheduled_snapshots_backoff(
    backed_up: Start, hetzner_fake: HetznerFake
) -> None:
    control = await backed_up()
    worker, vid = await mounted_alice(control, hetzner_fake)
    await run(control)
    (job,) = await jobs(worker)
    await beat(worker, ["alice"], [vid], [{"id": job["id"], "state": "failed", "error": "x"}])
    status, body = await control.admin("POST", "/v1/users/alice/backups")
    assert status == 202, body
    assert [j["id"] for j in await jobs(worker)] == [body["job"]["id"]]


async def test_a_job_nobody_reports_on_for_30_minutes_fails(
    backed_up: Start, hetzner_fake: HetznerFake
) -> None:
    control = await backed_up(backup_s3_endpoint="")  # no new job after the timeout
    worker, vid = await mounted_alice(control, hetzner_fake)
    await asyncio.to_thread(db_insert_job, control, "job-stale", vid, worker.key_id, time.time())
    assert control.app is not None
    control.app[SCALER].provisioner.clock = lambda: time.time() + 29 * 60
    await run(control)
    assert (await listed(control))["jobs"][0]["state"] == "pending"
    control.app[SCALER].provisioner.clock = lambda: time.time() + 31 * 60
    await run(control)
    latest = (await listed(control))["jobs"][0]
    assert latest["state"] == "failed" and "for 30 min" in latest["error"]


def db_insert_job(
    control: ControlPlane, job_id: str, vid: str, server_id: str, created_at: float
) -> None:
    execute(
        control.settings,
        "INSERT INTO backup_jobs (id, user_id, kind, reason, server_id, volume_id, state, "
        "created_at) VALUES (?, 'alice', 'snapshot', 'operator', ?, ?, 'pending', ?)",
        *(job_id, server_id, vid, created_at),
    )


def purge_now(control: ControlPlane) -> None:
    execute(
        control.settings, "UPDATE users SET purge_after = ? WHERE id = 'alice'", time.time() - 1
    )


async def test_a_cancelled_users_volume_is_deleted_only_after_its_final_snapshot(
    backed_up: Start, hetzner_fake: HetznerFake
) -> None:
    control = await backed_up()
    worker, vid = await mounted_alice(control, hetzner_fake)
    await snapshot_done(control, worker, vid, SNAP1)  # an earlier snapshot is not final
    status, _ = await control.admin("DELETE", "/v1/users/alice")
    assert status in (200, 202)
    # The set that removes the container carries the final snapshot: the agent keeps
    # the volume mounted for it rather than unmounting it with the container.
    reply = await worker.assignments()
    assert reply.body["containers"] == []
    (final,) = reply.body["backups"]
    assert "reason:final-retention" in final["tags"]
    await beat(worker, [], [vid])
    await run(control)
    assert [j["id"] for j in await jobs(worker)] == [final["id"]]  # asked once
    await beat(worker, [], [])  # unmounted, but attached while its final job is open
    await run(control)
    await asyncio.to_thread(purge_now, control)
    assert control.app is not None
    await control.app[FLEET].sweep()  # the worker is asked to purge
    await beat(worker, [], [])
    await control.app[FLEET].sweep()  # it did: alice is forgotten
    await run(control)
    assert vid in {str(v["id"]) for v in hetzner_fake.volumes.values()}
    assert "final snapshot" in volume_row(control, "alice")["last_error"]
    done = {"id": final["id"], "state": "done", "snapshot_id": SNAP2}
    await beat(worker, [], [], [done])
    await run(control)
    assert hetzner_fake.volumes == {}
    assert volume_row(control, "alice") == {}


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/users/alice/restore", {"snapshot_id": "not-hex"}, 400, "unknown_snapshot"),
        ("/v1/users/alice/restore", {"snapshot_id": SNAP2}, 400, "unknown_snapshot"),
        ("/v1/users/alice/restore", {"id": SNAP1}, 400, "malformed_body"),
        ("/v1/users/nobody/restore", {"snapshot_id": SNAP1}, 404, "not_found"),
        ("/v1/users/nobody/backups", None, 404, "not_found"),
        ("/v1/users/bob/backups", None, 409, "no_volume"),
        ("/v1/users/bob/restore", {"snapshot_id": SNAP1}, 409, "no_volume"),
    ],
)
async def test_operator_requests_that_cannot_be_done_are_refused(
    backed_up: Start,
    hetzner_fake: HetznerFake,
    path: str,
    body: dict[str, str] | None,
    status: int,
    code: str,
) -> None:
    control = await backed_up()
    worker, vid = await mounted_alice(control, hetzner_fake)
    await snapshot_done(control, worker, vid, SNAP1)
    await add_users(control, "bob")  # pending: no server, no volume
    got, reply = await control.admin("POST", path, body)
    assert (got, reply["error"]["code"]) == (status, code)


@pytest.fixture
def operator_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[ControlPlane], None]:
    def use(control: ControlPlane) -> None:
        for name in ("CLAWFLEET_TIMEOUT", "STRIPE_WEBHOOK_SECRET", "PLANS"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("CLAWFLEET_URL", control.url)
        monkeypatch.setenv("ADMIN_TOKEN", control.admin_token)

    return use


async def test_the_cli_lists_snapshots_asks_for_one_and_restores(
    backed_up: Start,
    hetzner_fake: HetznerFake,
    operator_env: Callable[[ControlPlane], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    control = await backed_up()
    operator_env(control)
    worker, vid = await mounted_alice(control, hetzner_fake)
    await add_users(control, "bob")
    ran = await cli(capsys, "backup", "alice")
    assert ran.code == 0, ran.err
    assert re.fullmatch(
        rf"snapshot job-[0-9a-f]{{16}} asked of {worker.key_id} \(pending\)\n", ran.out
    )
    (job,) = await jobs(worker)
    await beat(worker, ["alice"], [vid], [{"id": job["id"], "state": "done", "snapshot_id": SNAP1}])
    ran = await cli(capsys, "backups", "alice")
    assert ran.code == 0, ran.err
    (snapshot,) = parse_table(ran.out)
    assert (snapshot["SNAPSHOT"], snapshot["REASON"]) == (SNAP1, "operator")
    assert "recent jobs:" in ran.out
    ran = await cli(capsys, "--json", "backups", "alice")
    assert json.loads(ran.out) == await listed(control)
    for argv, code, error in [
        (("restore", "alice", "nothex"), 1, "unknown_snapshot"),
        (("backup", "bob"), 1, "no_volume"),
        (("backups", "nobody"), 1, "not_found"),
        (("restore", "alice"), 2, "snapshot"),
    ]:
        ran = await cli(capsys, *argv)
        assert (ran.code, error in ran.err) == (code, True), (argv, ran)
    ran = await cli(capsys, "restore", "alice", SNAP1)
    assert ran.code == 0, ran.err
    assert ran.out.startswith("restore job-")
    assert "alice" not in await specs(worker)


def db_insert_finished(control: ControlPlane, job_id: str, reason: str, finished: float) -> None:
    execute(
        control.settings,
        "INSERT INTO backup_jobs (id, user_id, kind, reason, state, created_at, "
        "finished_at, result_snapshot_id) VALUES (?, 'alice', 'snapshot', ?, 'done', ?, ?, ?)",
        *(job_id, reason, finished, finished, SNAP2),
    )


async def test_finished_jobs_older_than_the_retention_are_forgotten_but_final_ones(
    backed_up: Start, hetzner_fake: HetznerFake
) -> None:
    control = await backed_up(backup_s3_endpoint="")
    await add_users(control, "alice")
    now = time.time()
    for job_id, reason, age_days in [
        ("job-old", "scheduled", 30),
        ("job-recent", "scheduled", 28),
        ("job-final", "final-retention", 400),
    ]:
        await asyncio.to_thread(db_insert_finished, control, job_id, reason, now - age_days * 86400)
    await run(control)  # the default retention keeps 4 weekly snapshots: 29 days
    assert [j["id"] for j in (await listed(control))["jobs"]] == ["job-recent", "job-final"]
