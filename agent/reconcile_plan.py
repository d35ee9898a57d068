"""The reconciler's pure plan: desired specs + observed containers -> ordered actions.

Contract: `plan()` is a pure function. Given the desired specs, the managed containers
as inspected, the users whose (re)creation is deferred (backoff after a failed pull or
a failed upgrade), the users whose volumes are to be purged, and the managed networks
and volumes per user, it returns the ordered actions that bring the worker to the
desired state: removals first, then starts, creates and replaces. A running container
whose spec hash matches is never touched (re-adoption means zero restarts). `best` is
the one container of a user that counts (running first), for the plan and the reports.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from agent.docker_objects import Observed
from shared.protocol import ContainerSpec

STARTABLE = frozenset({"created", "exited"})


@dataclass(frozen=True)
class Create:
    spec: ContainerSpec


@dataclass(frozen=True)
class Start:
    user_id: str
    container_id: str


@dataclass(frozen=True)
class Replace:
    spec: ContainerSpec
    old: Observed


@dataclass(frozen=True)
class Remove:
    user_id: str
    container_id: str


@dataclass(frozen=True)
class RemoveNetwork:
    user_id: str
    network_id: str


@dataclass(frozen=True)
class PurgeVolumes:
    user_id: str
    names: tuple[str, ...]


Action = Create | Start | Replace | Remove | RemoveNetwork | PurgeVolumes

_STATUS_RANK = {"running": 0, "restarting": 1, "paused": 2, "created": 3, "exited": 4, "dead": 5}


def best(containers: Sequence[Observed]) -> Observed:
    return min(containers, key=lambda c: (_STATUS_RANK.get(c.status, 9), c.id))


def plan(
    desired: Mapping[str, ContainerSpec],
    observed: Sequence[Observed],
    *,
    deferred: Collection[str] = (),
    purge: Collection[str] = (),
    networks: Mapping[str, Sequence[str]] | None = None,
    volumes: Mapping[str, Sequence[str]] | None = None,
) -> list[Action]:
    by_user: dict[str, list[Observed]] = {}
    for c in observed:
        by_user.setdefault(c.user_id, []).append(c)

    removals: list[Action] = []
    work: list[Action] = []
    for user_id, containers in sorted(by_user.items()):
        spec = desired.get(user_id)
        if spec is None:
            removals.extend(Remove(user_id, c.id) for c in sorted(containers, key=lambda c: c.id))
            continue
        matching = [c for c in containers if c.spec_hash == spec.spec_hash]
        if matching:
            keep = best(matching)
        elif user_id in deferred:
            keep = best(containers)  # keep the previous version running
        else:
            keep = best(containers)
            removals.extend(Remove(user_id, c.id) for c in containers if c.id != keep.id)
            work.append(Replace(spec, keep))
            continue
        removals.extend(Remove(user_id, c.id) for c in containers if c.id != keep.id)
        if keep.status in STARTABLE:
            work.append(Start(user_id, keep.id))
        elif keep.status == "dead":
            removals.append(Remove(user_id, keep.id))
            if user_id not in deferred:
                work.append(Create(spec))

    for user_id, spec in sorted(desired.items()):
        if user_id not in by_user and user_id not in deferred:
            work.append(Create(spec))

    cleanup: list[Action] = []
    for user_id, net_ids in sorted((networks or {}).items()):
        if user_id not in desired:
            cleanup.extend(RemoveNetwork(user_id, n) for n in sorted(net_ids))
    for user_id, names in sorted((volumes or {}).items()):
        if user_id in purge and user_id not in desired and names:
            cleanup.append(PurgeVolumes(user_id, tuple(sorted(names))))
    return removals + cleanup + work
