"""Which Docker objects and route files belong to this agent, and which specs it accepts.

Contract: an agent owns an object (container, network, volume) only when it carries
`clawfleet.managed=true` and `clawfleet.worker=<this worker's id>` (or one of the ids
this agent held before it re-registered), and its `clawfleet.cluster` label, when both
sides know one, is this agent's cluster. Several agents, of one cluster or of several,
can share a Docker engine without touching each other's objects. The cluster is the
one the desired set names (every spec carries it in its labels); with an empty desired
set the worker id alone decides (12 random characters per registration).

Objects made by versions before these labels (no `clawfleet.worker` label) are
*legacy*: adopted only for a user in the current desired set and only under the name
that user's spec gives (container: the spec's name or its `-prev-` rename; network:
`clawfleet-<user>`; volume: one of the spec's volumes, or any `clawfleet-<user>-*`
volume of a user the control plane asks to purge). The reconciler replaces an adopted
legacy container once, so the replacement carries the labels. Everything here is pure.

`refusal(spec, owner)` says why the agent will not run a spec (None: accepted): every
name is full-matched (shared/names.py), the user is numeric `uid:gid` and never root,
config and secret files go only into the spec's own volumes along plain relative
paths, and the spec may not name another worker or cluster.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from agent.tenant_files import parts_of
from shared import names
from shared.protocol import ConfigFileSpec, ContainerSpec, SecretFileSpec

LABEL_MANAGED = "clawfleet.managed"
LABEL_USER = "clawfleet.user"
LABEL_WORKER = "clawfleet.worker"
LABEL_CLUSTER = "clawfleet.cluster"
# Labels the agent writes itself; a spec may state worker and cluster (checked), not these.
_RESERVED = frozenset(
    {
        LABEL_MANAGED,
        LABEL_USER,
        "clawfleet.spec_hash",
        "clawfleet.generation",
        "clawfleet.image",
    }
)
MAX_PREVIOUS = 8


@dataclass(frozen=True)
class Owner:
    worker_id: str
    cluster: str = ""  # "" until a desired set names one
    previous: frozenset[str] = frozenset()

    def labels(self) -> dict[str, str]:
        out = {LABEL_WORKER: self.worker_id}
        if self.cluster:
            out[LABEL_CLUSTER] = self.cluster
        return out


def network_name(user_id: str) -> str:
    return f"clawfleet-{user_id}"


def claims(owner: Owner, labels: Mapping[str, str], *, legacy_ok: bool) -> bool:
    """True when `owner` may act on an object with these labels; `legacy_ok` decides
    for an object without a worker label (see the module docstring)."""
    if labels.get(LABEL_MANAGED) != "true":
        return False
    worker = labels.get(LABEL_WORKER, "")
    if not worker:
        return legacy_ok
    if worker != owner.worker_id and worker not in owner.previous:
        return False
    cluster = labels.get(LABEL_CLUSTER, "")
    return not cluster or not owner.cluster or cluster == owner.cluster


def legacy_container_ok(name: str, user_id: str, specs: Mapping[str, ContainerSpec]) -> bool:
    spec = specs.get(user_id)
    return spec is not None and (name == spec.name or name.startswith(f"{spec.name}-prev-"))


def legacy_network_ok(name: str, user_id: str, specs: Mapping[str, ContainerSpec]) -> bool:
    return user_id in specs and name == network_name(user_id)


def legacy_volume_ok(
    name: str, user_id: str, specs: Mapping[str, ContainerSpec], purge: Collection[str]
) -> bool:
    spec = specs.get(user_id)
    if spec is not None and name in {v.name for v in spec.volumes}:
        return True
    return user_id in purge and name.startswith(f"clawfleet-{user_id}-")


def is_legacy(labels: Mapping[str, str]) -> bool:
    return not labels.get(LABEL_WORKER)


def desired_cluster(specs: Collection[ContainerSpec]) -> tuple[str, set[str]]:
    """The cluster the specs name ("" when none does) and the clusters when they disagree."""
    named = {s.labels[LABEL_CLUSTER] for s in specs if s.labels.get(LABEL_CLUSTER)}
    if len(named) == 1:
        return next(iter(named)), set()
    return "", named if len(named) > 1 else set()


def refusal(spec: ContainerSpec, owner: Owner) -> str | None:
    """Why this agent refuses to run `spec`, or None when it accepts it."""
    try:
        names.parse_container_user(spec.user)
    except ValueError as exc:
        return f"user: {exc}"
    checks = (
        (names.user_id_ok(spec.user_id), "user_id"),
        (names.docker_name_ok(spec.name), "name"),
        (names.image_ref_ok(spec.image), "image"),
        (not spec.hostname or names.dns_label_ok(spec.hostname), "hostname"),
        (not spec.route_host or names.dns_name_ok(spec.route_host), "route_host"),
        (names.url_path_ok(spec.health.path), "health path"),
        (all(names.env_name_ok(k) and "\0" not in v for k, v in spec.env.items()), "env"),
        (_ports_ok(spec), "ports"),
        (_volumes_ok(spec), "volumes"),
        (_labels_ok(spec), "labels"),
        (_files_ok(spec), "config or secret files"),
    )
    for ok, what in checks:
        if not ok:
            return f"{what}: not accepted by this agent"
    worker = spec.labels.get(LABEL_WORKER)
    if worker is not None and worker != owner.worker_id:
        return f"spec is for worker {worker!r}, this is {owner.worker_id!r}"
    cluster = spec.labels.get(LABEL_CLUSTER)
    if cluster is not None and owner.cluster and cluster != owner.cluster:
        return f"spec is for cluster {cluster!r}, this worker serves {owner.cluster!r}"
    return None


def _ports_ok(spec: ContainerSpec) -> bool:
    ports = [p.container_port for p in spec.ports] + [spec.health.port]
    return all(1 <= p <= 65535 for p in ports) and all(p.host_ip == "127.0.0.1" for p in spec.ports)


def _volumes_ok(spec: ContainerSpec) -> bool:
    return all(
        names.docker_name_ok(v.name)
        and v.name.startswith(f"clawfleet-{spec.user_id}-")
        and names.abs_path_ok(v.target)
        for v in spec.volumes
    )


def _files_ok(spec: ContainerSpec) -> bool:
    """Files go only into the spec's own volumes, along plain relative paths."""
    mounted = {v.name for v in spec.volumes}
    files: list[ConfigFileSpec | SecretFileSpec] = [*spec.config_files, *spec.secret_files]
    for f in files:
        try:
            parts_of(f.path)
        except ValueError:
            return False
        if f.volume not in mounted:
            return False
    return True


def _labels_ok(spec: ContainerSpec) -> bool:
    return all(names.label_ok(k, v) and k not in _RESERVED for k, v in spec.labels.items())
