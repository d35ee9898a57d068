"""Reconciling: desired specs + observed containers -> actions -> Docker, one pass at a time.

Contract: `Reconciler.reconcile()` runs one pass under the pass lock: the pure plan
(agent/reconcile_plan.py) over what this agent owns (agent/reconcile_view.py), each
action carried out as agent/reconcile_steps.py says. It checks the metadata block before
starting anything (no rule in place: nothing is created, started or replaced), records a
failed action as its user's error with backoff, then releases the block volumes nothing
uses, keeps Traefik routes in step, and `reports()` builds the heartbeat's reports. It
acts only as its `owner` (agent/ownership.py): without one (not registered yet) a pass
does nothing; the containers, networks, volumes and route files it sees are those the
owner claims; a spec the owner refuses (`ownership.refusal`: a bad name, a root user,
another worker's or cluster's spec) is reported and deferred, so nothing is created for
it and the user's previous container, if any, is left as it is; and a legacy container
(adopted from a version without worker labels) is replaced once so it gets them.
"""

from __future__ import annotations

import logging
import time

from agent import health, ownership, traefik
from agent.docker_objects import DockerError, Observed
from agent.metadata_block import MetadataBlockError
from agent.ownership import Owner
from agent.reconcile_plan import (
    Action,
    Create,
    PurgeVolumes,
    Remove,
    RemoveNetwork,
    Replace,
    Start,
    best,
    plan,
)
from agent.reconcile_steps import ReconcileSteps, RolledBack
from agent.reconcile_view import View, owned_by_user, owned_containers, view_of
from agent.tenant_files import TenantFileError
from agent.volume_commands import VolumeError
from shared.protocol import Assignments, ContainerReport

log = logging.getLogger("agent.reconcile")


class Reconciler(ReconcileSteps):
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
        await self._apply_all(actions, view.owner)
        await self._release_volumes(view)
        await self._grow_volumes(view)
        await self._sync_routes(view)
        # Tests await this line to know a pass has run (rather than sleeping for one).
        log.debug("reconcile pass done: %d actions", len(actions))

    async def _apply_all(self, actions: list[Action], owner: Owner) -> None:
        """Applies the actions in order; one that fails is its user's error, the rest go on."""
        for action in actions:
            if not self.metadata_blocked and isinstance(action, Create | Start | Replace):
                user = (
                    action.spec.user_id if isinstance(action, Create | Replace) else action.user_id
                )
                self.errors[user] = "metadata block rule not in place; not starting"
                continue
            try:
                await self._apply(action, owner)
            except RolledBack:
                pass  # already recorded with its own message and retry delay
            except (DockerError, TenantFileError, VolumeError, ValueError) as exc:
                if isinstance(action, Create | Replace):
                    self._fail(action.spec, str(exc))
                else:
                    user = action.user_id
                    self.errors[user] = str(exc)
                    log.warning("user %s: %s failed: %s", user, type(action).__name__, exc)

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
            c = best(matching)
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
