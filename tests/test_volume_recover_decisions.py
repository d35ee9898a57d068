"""A recovery's next action (control/volumes/relocation.py with `recovery`: a move with no
source, whose old volume is lost), as a table: the same phases as a move from `creating`
on, and at the end it is over (`recovered`) without ever calling the lost volume."""

from __future__ import annotations

import pytest

from control.volumes.relocation import Action, Facts, Job, Move, Phase, next_action

NOW = 1000.0
# No source: nothing alive, stopped or mounted there.
WAITING = Facts(
    on_target=True, running=False, source_alive=False, source_stopped=False, source_mounted=False
)
RUNNING = Facts(True, True, False, False, False)
LEFT = Facts(False, False, False, False, False)  # cancelled, or its server died
DONE = Job("done")
OPEN = Job("running")
FAILED_DUE = Job("failed", attempts=1, retry_after=NOW - 1, error="restic: wrong password")


def recovery(phase: Phase, restore: Job | None = None) -> Move:
    return Move(phase, None, "srv-b", None, restore, recovery=True)


CASES: list[tuple[str, Move, Facts, Action]] = [
    # No source to stop nor snapshot: a dead source is not a reason to call it off.
    ("creating", recovery("creating"), WAITING, Action("create")),
    ("attaching", recovery("attaching"), WAITING, Action("attach")),
    ("restore running", recovery("restoring", OPEN), WAITING, Action("wait", "")),
    ("restore failed: again", recovery("restoring", FAILED_DUE), WAITING, Action("restore", "", 2)),
    ("restore done: swap", recovery("restoring", DONE), WAITING, Action("swap")),
    ("user left before the swap", recovery("restoring", OPEN), LEFT, Action("abort", "")),
    ("starting", recovery("starting"), WAITING, Action("wait", "")),
    ("started: over", recovery("starting"), RUNNING, Action("recovered")),
    # After the swap the new volume is the user's state, as for a move.
    ("started, user left: over", recovery("starting"), LEFT, Action("recovered")),
]


@pytest.mark.parametrize(("name", "state", "facts", "expected"), CASES, ids=[c[0] for c in CASES])
def test_next_action_of_a_recovery(name: str, state: Move, facts: Facts, expected: Action) -> None:
    got = next_action(state, facts, NOW)
    assert (got.kind, got.attempts) == (expected.kind, expected.attempts)
    assert bool(got.reason) == (got.kind in ("wait", "abort"))


def test_a_move_with_a_source_still_releases_its_old_volume() -> None:
    assert next_action(Move("starting", "srv-a", "srv-b"), RUNNING, NOW).kind == "release"
