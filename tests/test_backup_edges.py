"""The edges of backups (docs/backups.md), through the whole control plane with the fake
Hetzner API and signed fake agents, plus the pure decisions in parameter tables:
- a cancelled user's final snapshot is created in the transaction that cancels it, so no
  worker can read a set without the container and without the job, whether or not the
  volume is reported mounted and whatever other job is open;
- an operator can waive a final snapshot that can never be taken (an event says so);
- a job describes its volume, so the agent can mount it;
- snapshots restic's retention forgot are no longer listed, and restoring one is a 400
  before any job exists;
- the scheduled snapshots a run asks for follow the users due and the runs left."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest

from control.appkeys import FLEET
from control.backup_jobs.decide import forgotten
from control.backup_jobs.messages import volume_of
from control.backups import (
    Candidate,
    due_for_snapshot,
    runs_left,
    snapshot_budget,
    steady_rate,
)
from control.billing import rules
from control.plans import Plan
from control.workers import assignments
from shared.protocol import BlockVolumeSpec
from tests.database import execute
from tests.fakes.hetzner import HetznerFake
from tests.fixtures import ControlPlane
from tests.test_autoscaler import add_users, run
from tests.test_backup_jobs import (  # noqa: F401 (backed_up: the fixture)
    SNAP1,
    SNAP2,
    Start,
    backed_up,
    jobs,
    listed,
    mounted_alice,
    purge_now,
    snapshot_done,
)
from tests.test_volumes_fleet import beat, volume_row
from tests.worker import FakeWorker

SNAP3 = "0123abcd" + "9" * 56


def event_kinds(control: ControlPlane, user_id: str) -> list[str]:
    sql = "SELECT kind FROM events WHERE user_id = ? ORDER BY id"  # either backend
    return [row["kind"] for row in execute(control.settings, sql, user_id)]


def job_rows(control: ControlPlane) -> list[dict[str, Any]]:
    return execute(control.settings, "SELECT * FROM backup_jobs ORDER BY created_at, id")


# -- 1. the final snapshot is part of the cancellation -------------------------------------


async def cancel_in_one_transaction(control: ControlPlane) -> None:
    """The transaction the facade runs for an operator's delete, and nothing after it."""
    assert control.app is not None
    fleet = control.app[FLEET]
    change = functools.partial(
        rules.operator_action,
        user_id="alice",
        action="delete",
        policy=fleet.billing_policy,
        now=1_796_000_000.0,
    )
    await assignments.commit(fleet.store, change, lambda a: a.touched)


async def test_the_set_that_removes_the_container_already_carries_the_final_snapshot(
    backed_up: Start,  # noqa: F811 (the imported fixture)
    hetzner_fake: HetznerFake,
) -> None:
    """The worker reads its set right after the cancelling commit (before anything the
    facade does after it): the job is there, describing the volume to mount."""
    control = await backed_up()
    worker, vid = await mounted_alice(control, hetzner_fake)
    await cancel_in_one_transaction(control)
    reply = await worker.assignments()
    assert reply.body["containers"] == []
    (final,) = reply.body["backups"]
    assert "reason:final-retention" in final["tags"] and final["volume_id"] == vid
    assert final["volume"]["id"] == vid and final["volume"]["device"].startswith("/dev/disk/")
    assert "backup_requested" in event_kinds(control, "alice")


async def test_the_final_snapshot_is_asked_for_even_unmounted_and_beside_an_open_job(
    backed_up: Start,  # noqa: F811 (the imported fixture)
    hetzner_fake: HetznerFake,
) -> None:
    """Two ways the old after-the-fact request missed it: the last heartbeat did not show
    the volume mounted, and another job of the user was open then."""
    control = await backed_up()
    worker, _ = await mounted_alice(control, hetzner_fake)
    await run(control)  # a scheduled snapshot, still open
    (scheduled,) = await jobs(worker)
    await beat(worker, ["alice"], [])  # the agent shows the volume unmounted
    status, _ = await control.admin("DELETE", "/v1/users/alice")
    assert status in (200, 202)
    found = await jobs(worker)
    assert found[0]["id"] == scheduled["id"]
    assert ["reason:final-retention" in j["tags"] for j in found] == [False, True]


async def test_without_backups_a_cancellation_asks_for_nothing(
    backed_up: Start,  # noqa: F811 (the imported fixture)
    hetzner_fake: HetznerFake,
) -> None:
    control = await backed_up(backup_s3_endpoint="")
    await mounted_alice(control, hetzner_fake)
    await cancel_in_one_transaction(control)
    assert job_rows(control) == []


# -- 1. the operator's way out: waiving a final snapshot that cannot be taken -------------


async def stuck_volume(control: ControlPlane, fake: HetznerFake) -> tuple[FakeWorker, str]:
    """alice cancelled and purged; her final snapshot failed and her volume detached:
    the volume waits for a snapshot nothing can take any more."""
    worker, vid = await mounted_alice(control, fake)
    status, _ = await control.admin("DELETE", "/v1/users/alice")
    assert status in (200, 202)
    (final,) = await jobs(worker)
    failed = {"id": final["id"], "state": "failed", "error": "restic: no space left"}
    await beat(worker, [], [], [failed])  # and the volume is unmounted
    await run(control)  # detached
    await asyncio.to_thread(purge_now, control)
    assert control.app is not None
    await control.app[FLEET].sweep()
    await beat(worker, [], [])
    await control.app[FLEET].sweep()  # purged: alice's row is gone
    await run(control)
    assert "final snapshot" in volume_row(control, "alice")["last_error"]
    return worker, vid


async def test_an_operator_waives_a_final_snapshot_that_cannot_be_taken(
    backed_up: Start,  # noqa: F811 (the imported fixture)
    hetzner_fake: HetznerFake,
) -> None:
    control = await backed_up()
    await stuck_volume(control, hetzner_fake)
    assert len(hetzner_fake.volumes) == 1
    body = {"reason": "final snapshot fails: bucket full; customer agreed"}
    status, reply = await control.admin("POST", "/v1/users/alice/backups/waive-final", body)
    assert status == 201, reply
    assert "final_snapshot_waived" in event_kinds(control, "alice")
    await run(control)
    assert hetzner_fake.volumes == {}
    assert volume_row(control, "alice") == {}


@pytest.mark.parametrize(
    ("user", "body", "setup", "status", "code"),
    [
        ("alice", {"reason": "x"}, "running", 409, "not_cancelled"),
        ("alice", {"reason": "x"}, "open-job", 409, "backup_in_flight"),
        ("alice", {"reason": "   "}, "cancelled", 400, "bad_reason"),
        ("alice", {"reason": "x" * 201}, "cancelled", 400, "bad_reason"),
        ("alice", {}, "cancelled", 400, "malformed_body"),
        ("bob", {"reason": "x"}, "running", 404, "no_volume"),
    ],
)
async def test_a_waiver_is_refused_where_nothing_waits_for_a_final_snapshot(
    backed_up: Start,  # noqa: F811 (the imported fixture)
    hetzner_fake: HetznerFake,
    user: str,
    body: dict[str, str],
    setup: str,
    status: int,
    code: str,
) -> None:
    control = await backed_up()
    worker, vid = await mounted_alice(control, hetzner_fake)
    await add_users(control, "bob")  # no volume
    if setup != "running":
        assert (await control.admin("DELETE", "/v1/users/alice"))[0] in (200, 202)
    if setup == "cancelled":
        (final,) = await jobs(worker)
        await beat(worker, [], [vid], [{"id": final["id"], "state": "failed", "error": "x"}])
    got, reply = await control.admin("POST", f"/v1/users/{user}/backups/waive-final", body)
    assert (got, reply["error"]["code"]) == (status, code)
    assert "final_snapshot_waived" not in event_kinds(control, user)


# -- 3. snapshots restic's retention forgot ------------------------------------------------


async def test_snapshots_the_retention_forgot_are_not_listed_nor_restored(
    backed_up: Start,  # noqa: F811 (the imported fixture)
    hetzner_fake: HetznerFake,
) -> None:
    control = await backed_up()
    worker, vid = await mounted_alice(control, hetzner_fake)
    await snapshot_done(control, worker, vid, SNAP1)
    await snapshot_done(control, worker, vid, SNAP2)
    status, body = await control.admin("POST", "/v1/users/alice/backups")
    assert status == 202, body
    third = body["job"]["id"]
    # The third snapshot's retention kept itself and SNAP2 (restic's short ids).
    done = {"id": third, "state": "done", "snapshot_id": SNAP3, "kept": [SNAP3[:8], SNAP2[:8]]}
    await beat(worker, ["alice"], [vid], [done])
    assert [s["id"] for s in (await listed(control))["snapshots"]] == [SNAP3, SNAP2]
    before = len(job_rows(control))
    status, reply = await control.admin("POST", "/v1/users/alice/restore", {"snapshot_id": SNAP1})
    assert (status, reply["error"]["code"]) == (400, "snapshot_forgotten")
    assert "BACKUP_RETENTION" in reply["error"]["message"]
    assert len(job_rows(control)) == before and await jobs(worker) == []
    forgotten_job = next(r for r in job_rows(control) if r["snapshot_id"] == SNAP1)
    assert forgotten_job["state"] == "done" and "forgotten" in forgotten_job["error"]
    status, _ = await control.admin("POST", "/v1/users/alice/restore", {"snapshot_id": SNAP2})
    assert status == 202


async def test_a_report_without_kept_forgets_nothing(
    backed_up: Start,  # noqa: F811 (the imported fixture)
    hetzner_fake: HetznerFake,
) -> None:
    """An older agent, a failed prune or more kept than a report holds: nothing is known
    gone, so everything stays listed."""
    control = await backed_up()
    worker, vid = await mounted_alice(control, hetzner_fake)
    await snapshot_done(control, worker, vid, SNAP1)
    await snapshot_done(control, worker, vid, SNAP2)
    assert [s["id"] for s in (await listed(control))["snapshots"]] == [SNAP2, SNAP1]


@pytest.mark.parametrize(
    ("listed_ids", "kept", "gone"),
    [
        ([("j1", SNAP1), ("j2", SNAP2)], [], []),  # nothing said: nothing known gone
        ([("j1", SNAP1), ("j2", SNAP2)], [SNAP2[:8]], ["j1"]),
        ([("j1", SNAP1), ("j2", SNAP2)], [SNAP1[:8], SNAP2[:8]], []),
        ([("j1", SNAP1)], ["deadbeef"], ["j1"]),
        ([], ["deadbeef"], []),
        ([("j1", SNAP3)], [SNAP3[:8]], []),  # a full id matches its short form
    ],
)
def test_which_listed_snapshots_the_retention_forgot(
    listed_ids: list[tuple[str, str]], kept: list[str], gone: list[str]
) -> None:
    assert forgotten(listed_ids, kept) == gone


# -- 2. a job describes its volume ---------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "size_gb", "volume"),
    [
        (
            "/dev/disk/by-id/scsi-0HC_Volume_1",
            10,
            BlockVolumeSpec("v1", "/dev/disk/by-id/scsi-0HC_Volume_1", 10),
        ),
        ("loop:alice", 1, BlockVolumeSpec("v1", "loop:alice", 1)),
        (None, 10, None),  # no device known yet
        ("/dev/sda", 10, None),  # a path the agent would refuse: never sent
        ("loop:alice", 0, None),
        ("loop:alice", 10241, None),
        ("loop:alice", None, None),
    ],
)
def test_the_volume_a_job_describes(
    device: str | None, size_gb: int | None, volume: BlockVolumeSpec | None
) -> None:
    assert volume_of("v1", device, size_gb) == volume


# -- 4. how many scheduled snapshots a run asks for ----------------------------------------

PLANS = {
    "default": Plan("default", 1024, 0.5, 512, 5, backup_minutes=15),
    "slow": Plan("slow", 1024, 0.5, 512, 5, backup_minutes=60),
}


@pytest.mark.parametrize(
    ("plan", "last", "now", "every", "left"),
    [
        ("default", None, 10_000.0, 20.0, 1),  # never backed up: now
        ("default", 10_000.0, 10_900.0, 20.0, 45),  # just due: a whole interval to go
        ("default", 10_000.0, 11_500.0, 20.0, 15),  # 10 minutes late
        ("default", 10_000.0, 11_800.0, 20.0, 1),  # an interval late: at once
        ("default", 10_000.0, 20_000.0, 20.0, 1),  # long overdue: still at least 1
        ("slow", 10_000.0, 13_600.0, 60.0, 60),
        ("gone", 10_000.0, 10_900.0, 20.0, 45),  # a removed plan: default's interval
    ],
)
def test_runs_left_before_a_due_user_is_an_interval_late(
    plan: str, last: float | None, now: float, every: float, left: int
) -> None:
    assert runs_left(Candidate("u", plan, "running", last), PLANS, now, every) == left


@pytest.mark.parametrize(
    ("plans_of", "every", "rate"),
    [
        ([], 20.0, 0.0),
        (["default"] * 900, 20.0, 20.0),  # 900 users of 15 minutes, a run every 20 s
        (["default"] * 9000, 20.0, 200.0),
        (["slow"] * 90, 20.0, 0.5),
        (["default", "slow"], 60.0, 60 / 900 + 60 / 3600),
        (["gone"] * 45, 20.0, 1.0),  # a removed plan: default's interval
    ],
)
def test_the_steady_rate_of_snapshots(plans_of: list[str], every: float, rate: float) -> None:
    candidates = [Candidate(f"u{i}", plan, "running", 0.0) for i, plan in enumerate(plans_of)]
    stopped = [Candidate("off", "default", "suspended", 0.0)]  # no live state: no rate
    assert steady_rate(candidates + stopped, PLANS, every) == pytest.approx(rate)


@pytest.mark.parametrize(
    ("left", "steady", "cap", "budget"),
    [
        ([], 20.0, 200, 0),
        ([45] * 20, 20.0, 200, 20),  # 900 users keeping up: each asked as it comes due
        ([45] * 30, 20.0, 200, 20),  # a few more due than the rate: the rest next run
        ([45] * 200, 200.0, 200, 200),  # 9,000 users: 200 a run, the cap
        ([45] * 300, 250.0, 200, 200),  # more than a run may ask: capped, the rest wait
        ([15] * 600, 20.0, 200, 40),  # a backlog after an outage: spread, none late
        ([1, 1, 1, 45], 1.0, 200, 3),  # the overdue ones all now
        ([2, 2, 2, 2], 0.5, 200, 2),
        ([1] * 500, 20.0, 200, 200),  # a fresh fleet, none backed up yet: capped
        ([0, -3], 0.0, 200, 2),  # nonsense runs left count as 1
        ([45] * 3, 20.0, 200, 3),  # never more than are due
        ([10] * 30, 5.0, 0, 0),
    ],
)
def test_the_snapshots_one_run_asks_for(
    left: list[int], steady: float, cap: int, budget: int
) -> None:
    assert snapshot_budget(left, steady, cap) == budget


def simulate(users: int, last: list[float | None], runs: int, cap: int = 200) -> list[float]:
    """The scheduler's choice, run after run (every 20 s, 15-minute plans), with each
    snapshot finishing within its run; the age of each snapshot when it is replaced."""
    every, ages = 20.0, []
    for run_no in range(runs):
        now = run_no * every
        cands = [Candidate(f"u{i:05}", "default", "running", last[i]) for i in range(users)]
        due = due_for_snapshot(cands, PLANS, now)
        left = [runs_left(cands[int(u[1:])], PLANS, now, every) for u in due]
        for user in due[: snapshot_budget(left, steady_rate(cands, PLANS, every), cap)]:
            before = last[int(user[1:])]
            if before is not None:
                ages.append(now - before)
            last[int(user[1:])] = now
    return ages


def test_a_fleet_that_keeps_up_is_asked_for_each_snapshot_as_it_comes_due() -> None:
    """9,000 users (the cap's coverage), their last snapshots spread over an interval:
    each next one is asked for within a run of coming due (recovery point 15 min)."""
    users = 9000
    last: list[float | None] = [-900.0 + 900.0 * i / users for i in range(users)]
    ages = simulate(users, last, runs=90)
    assert len(ages) >= 2 * users - 400 and max(ages) <= 900.0 + 20.0


def test_a_fresh_fleet_is_spread_and_none_is_left_an_interval_late() -> None:
    """5,000 users never backed up: 200 a run, then each keeps to its interval."""
    users = 5000
    ages = simulate(users, [None] * users, runs=150)
    assert ages and max(ages) <= 2 * 900.0
