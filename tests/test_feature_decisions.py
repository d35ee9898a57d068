"""The pure side of agent features (control/users/features.py, control/users/placement.py):
what a user's spec needs, what a server's agent is trusted to have, and where users go."""

from __future__ import annotations

import dataclasses

import pytest

from control.settings import profiles
from control.settings.profiles import ConfigFile, Profile
from control.users.features import parse, required_features, stored, withheld_reason
from control.users.placement import Demand, Room, choose_server, place

GENERIC = profiles.load("generic")
OPENCLAW = profiles.load("openclaw")
CONFIG = ConfigFile(volume="state", path="c.json", seed="{}", owned="{}")
ALL = frozenset(
    {"block-volumes", "backup-jobs", "health-headers", "tenant-files", "signin-gate", "cpu-weight"}
)


def profile(**changes: object) -> Profile:
    return dataclasses.replace(GENERIC, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("user_volumes", "backups", "prof", "needs"),
    [
        (False, False, GENERIC, set()),
        (True, False, GENERIC, {"block-volumes"}),
        (True, True, GENERIC, {"block-volumes", "backup-jobs"}),
        # Backups are jobs on a user's block volume: without volumes there are none.
        (False, True, GENERIC, set()),
        (
            False,
            False,
            profile(health_headers=(("X-Forwarded-For", "192.0.2.1"),)),
            {"health-headers"},
        ),
        (False, False, profile(config=CONFIG), {"tenant-files"}),
        (False, False, profile(secret_volume="state", secret_path=".env"), {"tenant-files"}),
        (False, False, profile(signin=True, identity_header="X-User"), {"signin-gate"}),
        (False, False, OPENCLAW, {"health-headers", "tenant-files", "signin-gate"}),
        (True, True, OPENCLAW, ALL - {"cpu-weight"}),
    ],
)
def test_required_features(
    user_volumes: bool, backups: bool, prof: Profile, needs: set[str]
) -> None:
    assert required_features(user_volumes=user_volumes, backups=backups, profile=prof) == needs


@pytest.mark.parametrize(
    ("declared", "kept"),
    [
        ([], ""),
        (["signin-gate", "block-volumes"], "block-volumes,signin-gate"),
        (["block-volumes", "block-volumes"], "block-volumes"),
        # Unknown names are dropped: nothing is trusted that this control plane would not check.
        (["teleport", "block-volumes"], "block-volumes"),
        (["teleport"], ""),
    ],
)
def test_only_known_features_are_stored(declared: list[str], kept: str) -> None:
    assert stored(declared) == kept
    assert parse(kept) == (frozenset(kept.split(",")) if kept else frozenset())


@pytest.mark.parametrize(
    ("text", "features"),
    [
        (None, frozenset()),  # never declared since features exist: none
        ("", frozenset()),
        ("block-volumes,teleport", frozenset({"block-volumes"})),  # edited by hand: still checked
    ],
)
def test_parse(text: str | None, features: frozenset[str]) -> None:
    assert parse(text) == features


@pytest.mark.parametrize(
    ("needs", "has", "reason"),
    [
        (frozenset(), frozenset(), None),
        (frozenset({"block-volumes"}), ALL, None),
        (frozenset({"block-volumes"}), None, None),  # a server not yet created: current agent
        (
            frozenset({"block-volumes"}),
            frozenset({"cpu-weight"}),
            "worker srv-x runs an agent without block-volumes; drain it or upgrade its agent",
        ),
        (
            frozenset({"tenant-files", "block-volumes"}),
            frozenset(),
            "worker srv-x runs an agent without block-volumes, tenant-files; "
            "drain it or upgrade its agent",
        ),
    ],
)
def test_withheld_reason(
    needs: frozenset[str], has: frozenset[str] | None, reason: str | None
) -> None:
    assert withheld_reason("srv-x", needs, has) == reason


VOL = frozenset({"block-volumes"})


def room(sid: str, free: int, features: frozenset[str] | None) -> Room:
    return Room(sid, True, free, 0, features=features)


@pytest.mark.parametrize(
    ("rooms", "needs", "where"),
    [
        # Best fit among the servers whose agent has the features, never the tighter old one.
        ([room("old", 1024, frozenset()), room("new", 4096, VOL)], VOL, "new"),
        ([room("old", 1024, frozenset()), room("new", 4096, VOL)], frozenset(), "old"),
        ([room("old", 4096, frozenset())], VOL, None),
        ([room("a", 2048, ALL), room("b", 1024, VOL)], VOL, "b"),
        # A server not yet created runs this version's agent.
        ([room("old", 1024, frozenset()), room("planned", 8192, None)], VOL, "planned"),
        # Ties between feature sets still go to the lower id.
        ([room("b", 1024, ALL), room("a", 1024, VOL)], VOL, "a"),
    ],
)
def test_users_go_only_where_the_agent_has_what_they_need(
    rooms: list[Room], needs: frozenset[str], where: str | None
) -> None:
    demand = Demand("u", 1024, features=needs)
    placed, unplaced = place([demand], rooms)
    assert placed.get("u") == where
    assert unplaced == ([] if where else ["u"])
    assert choose_server(rooms, 1024, demand=demand) == where


def test_packing_across_feature_sets_keeps_best_fit() -> None:
    """Rooms of several agent versions: each user takes the tightest room it may use,
    and a room's free memory is updated in its own feature set's list."""
    rooms = [room("old", 3072, frozenset()), room("new1", 2048, VOL), room("new2", 3072, ALL)]
    demands = [
        Demand("v1", 1024, features=VOL),
        Demand("p1", 1024),
        Demand("v2", 1024, features=VOL),
        Demand("v3", 1024, features=VOL),
        Demand("v4", 2048, features=VOL),
        Demand("v5", 1024, features=VOL),
    ]
    placed, unplaced = place(demands, rooms)
    # p1 needs nothing: new1's 1024 left is the tightest room of all; v4 fits only on
    # `old` (3072 free), whose agent lacks block-volumes.
    assert placed == {"v1": "new1", "p1": "new1", "v2": "new2", "v3": "new2", "v5": "new2"}
    assert unplaced == ["v4"]
