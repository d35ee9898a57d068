"""The pure decisions of a user's volume (control/volumes/steps.py) and the placement
rules that volumes add (control/users/placement.py), as parameter tables."""

from __future__ import annotations

from dataclasses import replace

import pytest

from control.plans import DEFAULT_PLAN
from control.users.placement import Demand, Room, choose_server, place
from control.volumes.steps import (
    Holder,
    Placement,
    Step,
    Volume,
    next_step,
    on_failure,
)

ON_A = Placement("running", "a", "nbg1")
ON_B = Placement("provisioning", "b", "nbg1")
ALIVE_BUSY = Holder(alive=True, using=True)
ALIVE_IDLE = Holder(alive=True, using=False)
DEAD = Holder(alive=False, using=True)  # its last report still shows the container


def vol(state: str = "attached", server: str | None = "a", location: str = "nbg1") -> Volume:
    return Volume(state, location, server)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("volume", "placement", "holder", "kind", "where", "forced"),
    [
        # first placement: create in the server's location
        (None, ON_A, None, "create", "nbg1", False),
        (None, Placement("pending"), None, "none", None, False),
        (None, Placement("running", "a", None), None, "wait", None, False),
        # a create whose answer was lost is made again (idempotent by name)
        (vol("creating", None), ON_A, None, "create", "nbg1", False),
        # attach to the placed server
        (vol("detached", None), ON_A, None, "attach", "a", False),
        (
            vol("detached", None),
            Placement("running", "a", "nbg1", False),
            None,
            "wait",
            None,
            False,
        ),
        (vol("attaching", "a"), ON_A, ALIVE_IDLE, "attach", "a", False),
        (vol("attached", "a"), ON_A, ALIVE_BUSY, "none", None, False),
        # another location: never attached, a backup and restore must move it
        (vol("detached", None, "fsn1"), ON_A, None, "wait", None, False),
        # moved: detach from the old server only once its container stopped
        (vol("attached", "a"), ON_B, ALIVE_BUSY, "wait", "a", False),
        (vol("attached", "a"), ON_B, ALIVE_IDLE, "detach", "a", False),
        (vol("detaching", "a"), ON_B, ALIVE_IDLE, "detach", "a", False),
        # the old server is dead or gone: forced, whatever its last report said
        (vol("attached", "a"), ON_B, DEAD, "detach", "a", True),
        (vol("attached", "a"), ON_B, None, "detach", "a", True),
        (vol("attached", "a"), Placement("pending"), DEAD, "detach", "a", True),
        (vol("attached", "a"), Placement("pending"), ALIVE_IDLE, "none", None, False),
        # suspended: stays with its server; cancelled: detached once stopped, and kept
        (
            vol("attached", "a"),
            Placement("suspended", "a", "nbg1"),
            ALIVE_IDLE,
            "none",
            None,
            False,
        ),
        (vol("attached", "a"), Placement("deprovisioned"), ALIVE_BUSY, "wait", "a", False),
        (vol("attached", "a"), Placement("deprovisioned"), ALIVE_IDLE, "detach", "a", False),
        (vol("detached", None), Placement("deprovisioned"), None, "none", None, False),
        # purged (retention over): detached first, then deleted
        (vol("attached", "a"), Placement(None), ALIVE_IDLE, "detach", "a", False),
        (vol("detached", None), Placement(None), None, "delete", None, False),
        (vol("deleting", None), Placement(None), None, "delete", None, False),
    ],
)
def test_next_step(
    volume: Volume | None,
    placement: Placement,
    holder: Holder | None,
    kind: str,
    where: str | None,
    forced: bool,
) -> None:
    step = next_step(volume, placement, holder)
    assert step.kind == kind, step
    assert (step.location if kind == "create" else step.server_id) == where
    assert step.forced is forced


BIGGER = Placement("running", "a", "nbg1", size_gb=20)


@pytest.mark.parametrize(
    ("volume", "placement", "holder", "step"),
    [
        # attached where the user runs and smaller than its plan: grown there
        (Volume("attached", "nbg1", "a", 10), BIGGER, ALIVE_BUSY, Step("resize", "a", size_gb=20)),
        (Volume("attached", "nbg1", "a", 10), replace(BIGGER, user_state="provisioning"), ALIVE_IDLE, Step("resize", "a", size_gb=20)),
        # as big or bigger: never shrunk
        (Volume("attached", "nbg1", "a", 20), BIGGER, ALIVE_BUSY, Step("none")),
        (Volume("attached", "nbg1", "a", 30), BIGGER, ALIVE_BUSY, Step("none")),
        # a step under way comes first; grown once it is attached there
        (Volume("attaching", "nbg1", "a", 10), BIGGER, ALIVE_IDLE, Step("attach", "a")),
        (Volume("detached", "nbg1", None, 10), BIGGER, None, Step("attach", "a")),
        # moving away, suspended or pending: the move or the user's return first
        (Volume("attached", "nbg1", "b", 10), BIGGER, ALIVE_IDLE, Step("detach", "b")),
        (Volume("attached", "nbg1", "a", 10), replace(BIGGER, user_state="suspended"), ALIVE_IDLE, Step("none")),
        (Volume("attached", "nbg1", "a", 10), Placement("pending", size_gb=20), ALIVE_IDLE, Step("none")),
    ],
)  # fmt: skip
def test_a_bigger_plan_grows_the_volume_where_it_runs(
    volume: Volume, placement: Placement, holder: Holder | None, step: Step
) -> None:
    assert next_step(volume, placement, holder) == step


def test_a_user_with_a_volume_elsewhere_is_never_given_a_new_one() -> None:
    """The invariant: whatever the holder's state, a user whose volume exists is never
    told to create another."""
    for state in ("detached", "attaching", "attached", "detaching"):
        for holder in (None, DEAD, ALIVE_BUSY, ALIVE_IDLE):
            for placement in (ON_A, ON_B, Placement("pending"), Placement("running", "c", "fsn1")):
                step = next_step(
                    vol(state, None if state == "detached" else "a"), placement, holder
                )
                assert step.kind != "create"
                assert step.kind != "attach" or step.server_id == placement.server_id


@pytest.mark.parametrize(
    ("kind", "code", "failures", "retry_after", "delay", "says"),
    [
        ("transient", "locked", 1, None, 5.0, "busy"),
        ("transient", "locked", 3, None, 20.0, "busy"),
        ("transient", "server_error", 30, None, 300.0, "busy"),
        ("rate_limited", "rate_limit_exceeded", 1, 7.0, 7.0, "rate limit"),
        ("limit", "resource_limit_exceeded", 1, None, 5.0, "16"),
        ("invalid", "location_mismatch", 1, None, 300.0, "different locations"),
        ("not_found", "not_found", 1, None, 300.0, "restore"),
        ("invalid", "invalid_input", 1, None, 300.0, "operator"),
    ],
)
def test_on_failure(
    kind: str, code: str, failures: int, retry_after: float | None, delay: float, says: str
) -> None:
    failure = on_failure(kind, code, failures, retry_after, rand=1.0)
    assert failure.delay == delay
    assert says in failure.message


@pytest.mark.parametrize(
    ("disk_gb", "size"), [(0, 10), (5, 10), (10, 10), (80, 80), (10240, 10240), (20000, 10240)]
)
def test_volume_size_is_within_hetzners_smallest_and_largest(disk_gb: int, size: int) -> None:
    assert replace(DEFAULT_PLAN, disk_gb=disk_gb).volume_gb == size


def room(server: str, location: str | None, slots: int = 16, free: int = 4096) -> Room:
    return Room(server, True, free, 0, location=location, volume_slots=slots)


@pytest.mark.parametrize(
    ("rooms", "demand", "expected"),
    [
        # a volume in fsn1: only fsn1 servers, even when nbg1 fits better
        ([room("a", "nbg1", free=1024), room("b", "fsn1")], Demand("u", 512, 0, "fsn1", True), "b"),
        ([room("a", "nbg1")], Demand("u", 512, 0, "fsn1", True), None),
        # no volume yet: any location
        ([room("a", "nbg1", free=1024), room("b", "fsn1")], Demand("u", 512), "a"),
        # attachment slots are a resource like memory
        ([room("a", "nbg1", 0, 1024), room("b", "nbg1")], Demand("u", 512, 0, "nbg1", True), "b"),
        ([room("a", "nbg1", 0)], Demand("u", 512, 0, "nbg1", True), None),
        # a server whose location is not known yet is anywhere
        ([room("a", None)], Demand("u", 512, 0, "fsn1", True), "a"),
    ],
)
def test_placement_follows_the_volume(
    rooms: list[Room], demand: Demand, expected: str | None
) -> None:
    placed, unplaced = place([demand], rooms)
    assert placed.get("u") == expected
    assert unplaced == ([] if expected else ["u"])
    assert choose_server(rooms, demand.memory_mb, demand.cpus, demand) == expected


def test_placing_many_users_uses_up_the_volume_slots() -> None:
    demands = [Demand(f"u{i}", 100, 0, "nbg1", True) for i in range(3)]
    placed, unplaced = place(demands, [room("a", "nbg1", slots=2)])
    assert sorted(placed) == ["u0", "u1"] and unplaced == ["u2"]


def test_step_defaults_are_nothing() -> None:
    assert Step("none") == next_step(None, Placement("deprovisioned"), None)
