"""How the reconciler carries out each planned action on Docker: `ReconcileSteps`, the
base of `Reconciler` (agent/reconcile.py), which runs the passes.

Contract: it pulls before creating or replacing (a worker cut off from the registry
keeps using an image it has); it mounts a spec's block volume before it creates,
replaces or starts its container (agent/volumes.py; no mount means no container, the
error is reported and retried with backoff) and unmounts those no spec names, no backup
job of the assignments or of `job_volumes` (the jobs the agent runs) names (a restore
runs with its user's spec withheld) and no container uses; `mount_for_job` mounts a
job's volume between passes, never during one (under the pass lock); it writes the
spec's config and secret files into its volumes before each container it creates
(agent/tenant_files.py; a refused file means no start); it gates upgrades on health and
rolls back (`RolledBack`: the failure is already recorded with its retry delay); and it
keeps per-user errors and backoff, dropped when the user's spec changes; `next_retry`
says when the earliest failed user is due again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent import health, tenant_files, traefik
from agent.client import backoff_delay
from agent.docker_objects import DockerError, Observed
from agent.metadata_block import MetadataBlock
from agent.ownership import Owner
from agent.reconcile_view import View
from agent.runtime import DockerRuntime
from agent.session import LazySession
from agent.tenant_files import TenantFileError
from agent.volume_commands import VolumeError
from agent.volumes import LABEL_VOLUME, BlockVolumes
from shared.names import parse_container_user
from shared.protocol import Assignments, BlockVolumeSpec, ContainerSpec, VolumeReport

log = logging.getLogger("agent.reconcile")


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


class ReconcileSteps:
    """All of the reconciler's state, the steps of each action and the per-user
    failures; `Reconciler` (agent/reconcile.py) adds the passes."""

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
        self.failed = asyncio.Event()  # set at each failure: the daemon's loop re-plans
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
        self.failed.set()
        log.warning("user %s: %s (retry in %.0fs)", spec.user_id, message, delay)

    def next_retry(self, now: float | None = None) -> float | None:
        """Seconds until the earliest failed user may be tried again (None: none is
        due later), so a pass comes then rather than a whole interval later: a volume
        attached a moment after its spec arrived is mounted within its backoff. Asked
        right after a pass: a failure already due was retried by it (a new failure
        moves its time on), so one left due is stale (a container started by a later
        Start, a create skipped) and must not make the loop spin."""
        now = time.monotonic() if now is None else now
        due = [f.retry_at - now for f in self._failures.values() if f.retry_at > now]
        return min(due) if due else None

    def _succeed(self, user_id: str) -> None:
        self._failures.pop(user_id, None)
        self.errors.pop(user_id, None)

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
        raise RolledBack("rolled back after a failed upgrade")

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

    async def _grow_volumes(self, view: View) -> None:
        """Grows each desired volume mounted here to its spec's size (a plan with more
        disk), with no restart; a failure stays on the volume's report."""
        if self.volumes is None:
            return
        for spec in view.specs.values():
            if spec.volume is not None:
                await self.volumes.grow(spec.volume)

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


class RolledBack(DockerError):
    """Raised after a rollback; the failure is already recorded."""
