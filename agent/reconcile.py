"""Reconciling: desired specs + observed containers -> actions -> Docker.

Contract: `plan()` is a pure function. Given the desired specs, the managed containers
as inspected, the users whose (re)creation is deferred (backoff after a failed pull or
a failed upgrade), the users whose volumes are to be purged, and the managed networks
and volumes per user, it returns the ordered actions that bring the worker to the
desired state: removals first, then starts, creates and replaces. A running container
whose spec hash matches is never touched (re-adoption means zero restarts).

`Reconciler` applies a plan: it checks the metadata block before starting anything,
pulls before replacing, mounts a spec's block volume before it creates, replaces or
starts its container (agent/volumes.py; no mount means no container, the error is
reported and retried with backoff) and unmounts those no spec names, no backup job of
the assignments or of `job_volumes` (the jobs the agent runs) names (a restore runs with
its user's spec withheld) and no container uses; `mount_for_job` mounts a job's volume
between passes, never during one, writes the spec's config and secret files into its volumes
before each container it creates (agent/tenant_files.py; a refused file means no
start), gates upgrades on health and rolls back, keeps per-user errors
and backoff, keeps Traefik routes in step, and builds the heartbeat's reports. It acts
only as its `owner` (agent/ownership.py): without one (not registered yet) a pass does
nothing; the containers, networks, volumes and route files it sees are those the owner
claims; a spec the owner refuses (`ownership.refusal`: a bad name, a root user, another
worker's or cluster's spec) is reported and deferred, so nothing is created for it and
the user's previous container, if any, is left as it is; and a legacy container
(adopted from a version without worker labels) is replaced once so it gets them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from agent import health, ownership, tenant_files, traefik
from agent.client import backoff_delay
from agent.metadata_block import MetadataBlock, MetadataBlockError
from agent.ownership import Owner
from agent.runtime import DockerError, DockerRuntime, Observed, Tagged
from agent.session import LazySession
from agent.tenant_files import TenantFileError
from agent.volumes import LABEL_VOLUME, BlockVolumes, VolumeError
from shared.names import parse_container_user
from shared.protocol import (
    Assignments,
    BlockVolumeSpec,
    ContainerReport,
    ContainerSpec,
    VolumeReport,
)

log = logging.getLogger("agent.reconcile")

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


def _best(containers: Sequence[Observed]) -> Observed:
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
            keep = _best(matching)
        elif user_id in deferred:
            keep = _best(containers)  # keep the previous version running
        else:
            keep = _best(containers)
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


@dataclass
class _Failure:
    spec_hash: str
    attempts: int
    retry_at: float
    upgrade: bool = False


@dataclass
class ReconcilerOptions:
    health_gate: float = 60.0
    health_timeout: float = 2.0
    stop_grace: int = 30
    upgrade_retry: float = 600.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    traefik_dir: Path | None = None
    route_options: traefik.RouteOptions = field(default_factory=traefik.RouteOptions)


class Reconciler:
    def __init__(
        self,
        runtime: DockerRuntime,
        metadata: MetadataBlock,
        options: ReconcilerOptions,
        owner: Owner | None = None,
        volumes: BlockVolumes | None = None,
    ) -> None:
        # Set by the daemon once it has credentials; replaced when it re-registers.
        self.owner = owner
        self.runtime = runtime
        self.metadata = metadata
        self.opts = options
        self.volumes = volumes
        self.desired: Assignments | None = None
        self.errors: dict[str, str] = {}
        self.activity: dict[str, str] = {}
        self.metadata_blocked: bool | None = None
        self.refused: Mapping[str, str] = {}
        self._failures: dict[str, _Failure] = {}
        self._lock = asyncio.Lock()
        self._http = LazySession(limit=8)  # the health checks' probes
        # Told the accepted specs at the start of every pass (the sign-in verifier),
        # before any Docker call, so it follows the desired set even with Docker down.
        self.on_specs: Callable[[Collection[ContainerSpec]], None] | None = None
        # The volumes the agent's backup jobs work on: kept mounted (agent/backup_jobs.py).
        self.job_volumes: Callable[[], Collection[str]] = lambda: ()

    async def close(self) -> None:
        await self._http.close()

    @property
    def applied_generation(self) -> int:
        return self.desired.generation if self.desired else 0

    def _specs(self) -> dict[str, ContainerSpec]:
        return {s.user_id: s for s in self.desired.containers} if self.desired else {}

    def _deferred(self, specs: Mapping[str, ContainerSpec], now: float) -> set[str]:
        out = set()
        for user_id, failure in list(self._failures.items()):
            spec = specs.get(user_id)
            if spec is None or spec.spec_hash != failure.spec_hash:
                del self._failures[user_id]  # a new spec deserves a fresh try
                continue
            if now < failure.retry_at:
                out.add(user_id)
        return out

    def _fail(self, spec: ContainerSpec, message: str, *, upgrade: bool = False) -> None:
        prev = self._failures.get(spec.user_id)
        attempts = prev.attempts + 1 if prev and prev.spec_hash == spec.spec_hash else 1
        delay = (
            self.opts.upgrade_retry
            if upgrade
            else backoff_delay(attempts - 1, self.opts.backoff_base, self.opts.backoff_max)
        )
        self._failures[spec.user_id] = _Failure(
            spec.spec_hash, attempts, time.monotonic() + delay, upgrade
        )
        self.errors[spec.user_id] = message
        log.warning("user %s: %s (retry in %.0fs)", spec.user_id, message, delay)

    def _succeed(self, user_id: str) -> None:
        self._failures.pop(user_id, None)
        self.errors.pop(user_id, None)

    # -- one pass -------------------------------------------------------------------------

    async def reconcile(self, desired: Assignments | None = None) -> None:
        async with self._lock:
            if desired is not None:
                self.desired = desired
            await self._pass()

    def _view(self, owner: Owner) -> View:
        return view_of(self._specs(), owner)

    async def _pass(self) -> None:
        if self.owner is None:
            return  # not registered yet: nothing on this engine can be ours
        view = self._view(self.owner)
        for user, reason in view.refused.items():
            if self.refused.get(user) != reason:
                log.error("user %s: spec refused: %s", user, reason)
        self.refused = view.refused
        if self.on_specs is not None:
            self.on_specs(list(view.accepted.values()))
        purge = set(self.desired.purge) if self.desired else set()
        try:
            await self.metadata.ensure()
            self.metadata_blocked = True
        except MetadataBlockError as exc:
            self.metadata_blocked = False
            log.error("metadata block rule not in place: %s; starting no container", exc)
        observed = owned_containers(await self.runtime.list_managed(), view)
        networks = owned_by_user(
            await self.runtime.managed_networks(),
            view.owner,
            lambda t: ownership.legacy_network_ok(t.name, t.user_id, view.specs),
        )
        volumes = (
            owned_by_user(
                await self.runtime.managed_volumes(),
                view.owner,
                lambda t: ownership.legacy_volume_ok(t.name, t.user_id, view.specs, purge),
            )
            if purge
            else {}
        )
        actions = plan(
            view.specs,
            observed,
            deferred=self._deferred(view.accepted, time.monotonic()) | set(view.refused),
            purge=purge,
            networks=networks,
            volumes=volumes,
        )
        for action in actions:
            if not self.metadata_blocked and isinstance(action, Create | Start | Replace):
                user = (
                    action.spec.user_id if isinstance(action, Create | Replace) else action.user_id
                )
                self.errors[user] = "metadata block rule not in place; not starting"
                continue
            try:
                await self._apply(action, view.owner)
            except _RolledBack:
                pass  # already recorded with its own message and retry delay
            except (DockerError, TenantFileError, VolumeError, ValueError) as exc:
                if isinstance(action, Create | Replace):
                    self._fail(action.spec, str(exc))
                else:
                    user = action.user_id
                    self.errors[user] = str(exc)
                    log.warning("user %s: %s failed: %s", user, type(action).__name__, exc)
        await self._release_volumes(view)
        await self._sync_routes(view)
        # Tests await this line to know a pass has run (rather than sleeping for one).
        log.debug("reconcile pass done: %d actions", len(actions))

    async def _apply(self, action: Action, owner: Owner) -> None:
        match action:
            case Remove(user_id, cid):
                log.info("user %s: removing unassigned container %s", user_id, cid[:12])
                await self.runtime.stop(cid, self.opts.stop_grace)
                await self.runtime.remove(cid)
                self.errors.pop(user_id, None)
            case RemoveNetwork(user_id, nid):
                await self.runtime.remove_network(nid)
            case PurgeVolumes(user_id, names):
                for name in names:
                    log.info("user %s: purging volume %s", user_id, name)
                    await self.runtime.remove_volume(name)
            case Start(user_id, cid):
                log.info("user %s: starting stopped container %s", user_id, cid[:12])
                await self._volume_binds(self._specs().get(user_id), owner)  # never empty
                await self.runtime.start(cid)
            case Create(spec):
                await self._create(spec, owner)
            case Replace(spec, old):
                await self._replace(spec, old, owner)

    async def _ensure_image(self, spec: ContainerSpec, previous_ref: str | None) -> None:
        present = await self.runtime.image_present(spec.image)
        changed = previous_ref is not None and previous_ref != spec.image
        if present and not changed:
            return
        self.activity[spec.user_id] = "pulling"
        try:
            log.info("user %s: pulling %s", spec.user_id, spec.image)
            await self.runtime.pull(spec.image)
        except DockerError:
            # A worker cut off from the registry keeps working with what it has.
            if not present:
                raise
            log.warning(
                "user %s: pull of %s failed; using the local image", spec.user_id, spec.image
            )
        finally:
            self.activity.pop(spec.user_id, None)

    async def _create(self, spec: ContainerSpec, owner: Owner) -> None:
        binds = await self._volume_binds(spec, owner)
        await self._ensure_image(spec, None)
        net = await self.runtime.ensure_network(spec.user_id, owner)
        await self.runtime.ensure_volumes(spec, owner)
        await self._write_files(spec, net, binds)
        cid = await self.runtime.create(spec, self.applied_generation, net, owner, binds)
        log.info("user %s: created container %s (%s)", spec.user_id, cid[:12], spec.image)
        await self.runtime.start(cid)
        self._succeed(spec.user_id)

    async def _replace(self, spec: ContainerSpec, old: Observed, owner: Owner) -> None:
        if spec.volume is not None:
            await self._mount(spec.volume)  # before the old one stops: no mount, no stop
        await self._ensure_image(spec, old.image_ref)
        net = await self.runtime.ensure_network(spec.user_id, owner)
        await self.runtime.ensure_volumes(spec, owner)
        log.info("user %s: replacing %s with %s", spec.user_id, old.id[:12], spec.image)
        await self.runtime.stop(old.id, self.opts.stop_grace)
        await self.runtime.rename(old.id, f"{spec.name}-prev-{old.id[:12]}")
        new_id: str | None = None
        healthy = False
        gate = health.gate_for(spec.health, self.opts.health_gate)
        reason = f"not healthy within {gate:g}s"
        try:
            # Written once the old container has stopped, so it never sees them change.
            binds = await self._volume_binds(spec, owner)  # copies in stopped Docker volumes
            await self._write_files(spec, net, binds)
            new_id = await self.runtime.create(spec, self.applied_generation, net, owner, binds)
            await self.runtime.start(new_id)
            new = await self.runtime.inspect(new_id)
            port = new.host_ports.get(spec.health.port) if new else None
            if port is not None:
                healthy = await health.wait_healthy(
                    self._http.get(),
                    port,
                    spec.health.path,
                    gate=gate,
                    probe_timeout=self.opts.health_timeout,
                    headers=spec.health.headers,
                )
        except (DockerError, TenantFileError, VolumeError) as exc:
            reason = str(exc)
        if not healthy:
            await self._roll_back(spec, old, new_id, reason)
        await self.runtime.remove(old.id)
        log.info("user %s: upgrade to %s healthy", spec.user_id, spec.image)
        self._succeed(spec.user_id)

    async def _write_files(
        self, spec: ContainerSpec, network_id: str, binds: Mapping[str, str]
    ) -> None:
        """The spec's config and secret files, in its volumes (already ensured and
        checked as this user's; `binds` are those on its block volume), before its
        container starts."""
        if not spec.config_files and not spec.secret_files:
            return
        uid, gid = parse_container_user(spec.user)
        gateway = await self.runtime.network_gateway(network_id) if spec.config_files else ""
        mounts: dict[str, Path] = {}
        for name in {f.volume for f in spec.config_files} | {f.volume for f in spec.secret_files}:
            mounts[name] = Path(binds.get(name) or await self.runtime.volume_mountpoint(name))
        plan = tenant_files.FilePlan(
            uid,
            gid,
            gateway,
            tuple(
                tenant_files.ConfigFile(mounts[f.volume], f.path, f.seed, f.owned)
                for f in spec.config_files
            ),
            tuple(
                tenant_files.SecretFile(mounts[f.volume], f.path, f.content)
                for f in spec.secret_files
            ),
        )
        await asyncio.to_thread(tenant_files.prepare, plan)

    async def _roll_back(
        self, spec: ContainerSpec, old: Observed, new_id: str | None, reason: str
    ) -> None:
        if new_id is not None:
            await self.runtime.remove(new_id)
        await self.runtime.rename(old.id, old.name)
        await self.runtime.start(old.id)
        self._fail(
            spec,
            f"upgrade to {spec.image} failed ({reason}); "
            f"rolled back to {old.image_ref or old.image_id[:19]}",
            upgrade=True,
        )
        # The failure is recorded; stop the caller from treating this as success.
        raise _RolledBack("rolled back after a failed upgrade")

    # -- block volumes (agent/volumes.py) -----------------------------------------------

    async def _volume_binds(self, spec: ContainerSpec | None, owner: Owner) -> dict[str, str]:
        """Mounts the spec's block volume and makes its directories (from the user's
        Docker volumes here, if any): volume name -> host directory, {} for a spec
        without one. VolumeError while it cannot."""
        if spec is None or spec.volume is None:
            return {}
        volumes = await self._mount(spec.volume)
        uid, gid = parse_container_user(spec.user)
        names = [v.name for v in spec.volumes]
        adopt = {n: await self.runtime.owned_volume_dir(spec.user_id, n, owner) for n in names}
        found = {n: d for n, d in adopt.items() if d is not None}
        return await volumes.tenant_dirs(spec.volume, names, uid, gid, found)

    async def _mount(self, volume: BlockVolumeSpec) -> BlockVolumes:
        if self.volumes is None:
            raise VolumeError("this agent has no block volume support configured")
        await self.volumes.ensure(volume)
        return self.volumes

    async def mount_for_job(self, volume: BlockVolumeSpec) -> None:
        """Mounts a backup job's volume, under the pass lock: a pass releasing volumes
        never runs while it is mounted (the job is known by then, so it is kept)."""
        async with self._lock:
            await self._mount(volume)

    async def _release_volumes(self, view: View) -> None:
        """Unmounts the volumes no desired spec names, no backup job names and no
        container uses any more (any container on the engine: a removal that failed keeps
        its volume)."""
        if self.volumes is None:
            return
        keep = [s.volume for s in view.specs.values() if s.volume is not None]
        # A backup job's volume stays mounted: a restore comes with its user's spec withheld.
        jobs = {j.volume_id for j in self.desired.backups} if self.desired else set()
        jobs |= set(self.job_volumes())
        try:
            in_use = {c.labels.get(LABEL_VOLUME, "") for c in await self.runtime.list_managed()}
            in_use |= jobs
            for volume_id in await self.volumes.release(keep, in_use):
                log.info("volume %s: unmounted (no longer assigned)", volume_id)
        except (DockerError, VolumeError, OSError) as exc:
            log.warning("releasing volumes: %s", exc)

    async def volume_reports(self) -> list[VolumeReport]:
        if self.volumes is None:
            return []
        desired = [s.volume for s in self._specs().values() if s.volume is not None]
        return await self.volumes.reports(desired)

    # -- routes and reports ---------------------------------------------------------------

    async def _sync_routes(self, view: View) -> None:
        directory = self.opts.traefik_dir
        if directory is None:
            return
        worker = view.owner.worker_id
        keep: set[str] = set()
        for c in owned_containers(await self.runtime.list_managed(), view):
            spec = view.accepted.get(c.user_id)
            if spec is None or not spec.route_host or not c.running:
                continue
            port = c.host_ports.get(spec.health.port) or next(iter(c.host_ports.values()), None)
            if port is None:
                continue
            keep.add(c.user_id)
            try:
                gate = traefik.Gate(spec.identity_header) if spec.signin_key else None
                if traefik.write_route(
                    directory,
                    worker,
                    c.user_id,
                    spec.route_host,
                    port,
                    self.opts.route_options,
                    gate,
                ):
                    log.info("user %s: route %s -> 127.0.0.1:%d", c.user_id, spec.route_host, port)
            except (OSError, ValueError) as exc:
                self.errors[c.user_id] = f"route: {exc}"
        # Routes of users still assigned but momentarily down stay: Traefik answers 502.
        keep |= set(view.specs)
        removed = traefik.prune(
            directory, worker, keep, stale_workers=view.owner.previous, legacy=view.specs
        )
        for user in removed:
            log.info("user %s: route removed", user)

    async def reports(self) -> list[ContainerReport]:
        if self.owner is None:
            return []
        view = self._view(self.owner)
        specs = view.specs
        observed = owned_containers(await self.runtime.list_managed(), view)
        by_user: dict[str, list[Observed]] = {}
        for c in observed:
            by_user.setdefault(c.user_id, []).append(c)
        reports = []
        for user_id, spec in sorted(specs.items()):
            containers = by_user.get(user_id, [])
            matching = [c for c in containers if c.spec_hash == spec.spec_hash] or containers
            error = view.refused.get(user_id) or self.errors.get(user_id)
            if user_id in view.refused:
                error = f"spec refused: {error}"
            if self.activity.get(user_id) == "pulling":
                reports.append(ContainerReport(user_id, "pulling", "none", error=error))
                continue
            if not matching:
                state = "failed" if error else "missing"
                reports.append(ContainerReport(user_id, state, "none", error=error))
                continue
            c = _best(matching)
            state = {"dead": "exited", "paused": "exited"}.get(c.status, c.status)
            port = c.host_ports.get(spec.health.port)
            ok = (
                c.running
                and port is not None
                and await health.probe(
                    self._http.get(),
                    port,
                    spec.health.path,
                    self.opts.health_timeout,
                    spec.health.headers,
                )
            )
            word = health.classify(
                c.running,
                ok,
                health.seconds_since(c.started_at),
                health.gate_for(spec.health, self.opts.health_gate),
            )
            reports.append(
                ContainerReport(
                    user_id=user_id,
                    state=state,
                    health=word,
                    image_id=c.image_id,
                    started_at=c.started_at,
                    restart_count=c.restart_count,
                    error=error,
                )
            )
        return reports


class _RolledBack(DockerError):
    """Raised after a rollback; the failure is already recorded."""
