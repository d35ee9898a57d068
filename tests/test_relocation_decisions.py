"""A move to another location's next action (control/volumes/relocation.py), as a table:
each row is one phase and what the fleet reports, and the one action it must lead to."""

from __future__ import annotations

import pytest

from control.volumes.relocation import Action, Facts, Job, Move, Phase, next_action

NOW = 1000.0
# The user on the target, its container not up yet; the source alive, stopped, unmounted.
READY = Facts(
    on_target=True, running=False, source_alive=True, source_stopped=True, source_mounted=False
)
BUSY = Facts(True, False, True, True, True, busy=True)
LEFT = Facts(False, False, True, True, False)  # cancelled, or its target died
SOURCE_DEAD = Facts(True, False, False, False, False)
STILL_RUNNING = Facts(True, False, True, False, True)  # the source's container is not gone
MOUNTED = Facts(True, True, True, True, True)  # running on the target; source still mounted
RUNNING = Facts(True, True, True, True, False)
DONE = Job("done")
OPEN = Job("running")
FAILED_EARLY = Job("failed", attempts=2, retry_after=NOW + 60, error="s3 down")
FAILED_DUE = Job("failed", attempts=2, retry_after=NOW - 1, error="s3 down")


def move(phase: Phase, snapshot: Job | None = None, restore: Job | None = None) -> Move:
    return Move(phase, "srv-a", "srv-b", snapshot, restore)


CASES: list[tuple[str, Move, Facts, Action]] = [
    ("container still up", move("stopping"), STILL_RUNNING, Action("wait", "")),
    ("container gone: snapshot", move("stopping"), READY, Action("snapshot")),
    ("a scheduled job still open", move("stopping"), BUSY, Action("wait", "")),
    ("source died first", move("stopping"), SOURCE_DEAD, Action("abort", "")),
    ("user left before", move("stopping"), LEFT, Action("abort", "")),
    ("snapshot running", move("snapshot", OPEN), READY, Action("wait", "")),
    ("snapshot done", move("snapshot", DONE), READY, Action("snapshot_done")),
    ("snapshot failed: back-off", move("snapshot", FAILED_EARLY), READY, Action("wait", "")),
    ("snapshot failed: again", move("snapshot", FAILED_DUE), READY, Action("snapshot", "", 3)),
    ("snapshot, source died", move("snapshot", OPEN), SOURCE_DEAD, Action("abort", "")),
    ("creating", move("creating", DONE), READY, Action("create")),
    ("create, user left", move("creating", DONE), LEFT, Action("abort", "")),
    # Once the snapshot exists, a dead source no longer matters: the copy is in S3.
    ("creating, source dead", move("creating", DONE), SOURCE_DEAD, Action("create")),
    ("attaching", move("attaching", DONE), READY, Action("attach")),
    ("restore running", move("restoring", DONE, OPEN), READY, Action("wait", "")),
    ("restore done: swap", move("restoring", DONE, DONE), READY, Action("swap")),
    ("restore failed", move("restoring", DONE, FAILED_EARLY), READY, Action("wait", "")),
    ("restore again", move("restoring", DONE, FAILED_DUE), READY, Action("restore", "", 3)),
    ("restore, user left", move("restoring", DONE, OPEN), LEFT, Action("abort", "")),
    ("starting", move("starting"), READY, Action("wait", "")),
    ("started: release", move("starting"), RUNNING, Action("release")),
    # After the swap the new volume is the user's state: leaving does not undo the move.
    ("started, user left", move("starting"), LEFT, Action("release")),
    ("old still mounted", move("releasing"), MOUNTED, Action("wait", "")),
    ("old unmounted", move("releasing"), RUNNING, Action("detach_old")),
    ("source gone", move("releasing"), SOURCE_DEAD, Action("detach_old", forced=True)),
    ("deleting", move("deleting"), SOURCE_DEAD, Action("delete_old")),
    ("aborting", move("aborting"), LEFT, Action("discard")),
]


@pytest.mark.parametrize(("name", "state", "facts", "expected"), CASES, ids=[c[0] for c in CASES])
def test_next_action(name: str, state: Move, facts: Facts, expected: Action) -> None:
    got = next_action(state, facts, NOW)
    assert (got.kind, got.attempts, got.forced) == (
        expected.kind,
        expected.attempts,
        expected.forced,
    )
    # A wait or an abort says why on the user; nothing else needs a reason.
    assert bool(got.reason) == (got.kind in ("wait", "abort"))


@pytest.mark.parametrize("phase", ["stopping", "snapshot", "creating", "attaching", "restoring"])
def test_before_the_swap_a_user_that_left_the_target_calls_the_move_off(phase: Phase) -> None:
    """Its old volume is still its only state: never a start on the new, unrestored one."""
    assert next_action(move(phase, DONE, OPEN), LEFT, NOW).kind == "abort"


def test_the_wait_names_the_server_and_the_failure() -> None:
    got = next_action(move("snapshot", FAILED_EARLY), READY, NOW)
    assert "s3 down" in got.reason and "srv-a" in got.reason
    assert "srv-a" in next_action(move("stopping"), STILL_RUNNING, NOW).reason
