"""One pass's view: who the agent acts as, which desired specs it accepts, and which
containers, networks and volumes on the engine are its own (agent/ownership.py).

Contract: all pure. `view_of` sets the owner's cluster from the desired set and refuses
a spec `ownership.refusal` refuses (a bad name, a root user, another worker's or
cluster's spec) or that names a cluster while the desired set names several; a refused
spec is kept in `specs` (its user's objects stay ours) but not in `accepted`.
`owned_containers` keeps the containers the owner claims; a legacy container (adopted
from a version without worker labels) gets an empty spec hash, so it is replaced once
and gets them. `owned_by_user` groups the networks or volumes the owner claims by user.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from agent import ownership
from agent.docker_objects import Observed, Tagged
from agent.ownership import Owner
from shared.protocol import ContainerSpec


@dataclass(frozen=True)
class View:
    """One pass's view: who the agent acts as, and which desired specs it accepts."""

    owner: Owner
    specs: Mapping[str, ContainerSpec]  # every desired spec, refused ones included
    accepted: Mapping[str, ContainerSpec]
    refused: Mapping[str, str]  # user -> why


def view_of(specs: Mapping[str, ContainerSpec], owner: Owner) -> View:
    cluster, mixed = ownership.desired_cluster(list(specs.values()))
    owner = replace(owner, cluster=cluster or owner.cluster)
    accepted: dict[str, ContainerSpec] = {}
    refused: dict[str, str] = {}
    for user_id, spec in specs.items():
        reason = ownership.refusal(spec, owner)
        if reason is None and mixed and spec.labels.get(ownership.LABEL_CLUSTER):
            reason = f"the desired set names several clusters ({', '.join(sorted(mixed))})"
        if reason is None:
            accepted[user_id] = spec
        else:
            refused[user_id] = reason
    return View(owner, specs, accepted, refused)


def owned_containers(observed: Sequence[Observed], view: View) -> list[Observed]:
    out = []
    for c in observed:
        legacy_ok = ownership.legacy_container_ok(c.name, c.user_id, view.specs)
        if not ownership.claims(view.owner, c.labels, legacy_ok=legacy_ok):
            continue
        # A legacy container matches no spec hash: replaced once, it gets the labels.
        out.append(replace(c, spec_hash="") if ownership.is_legacy(c.labels) else c)
    return out


def owned_by_user(
    objects: Sequence[Tagged], owner: Owner, legacy_ok: Callable[[Tagged], bool]
) -> dict[str, list[str]]:
    by_user: dict[str, list[str]] = {}
    for obj in objects:
        if obj.user_id and ownership.claims(owner, obj.labels, legacy_ok=legacy_ok(obj)):
            by_user.setdefault(obj.user_id, []).append(obj.id)
    return by_user
