"""The agent's loops: register, heartbeat, long-poll, periodic reconcile.

Contract: `Daemon.run()` returns an exit status. Reconciling starts at once from the
desired set kept in STATE_DIR, independent of the control plane. Control-plane outages
(unreachable, 5xx, 408/429) are retried with capped exponential backoff and jitter and
never change a container. 403 (revoked) stops every loop, leaves containers as they
are, and returns EXIT_REVOKED. 401 unknown_worker re-registers only with a usable
bootstrap token (both in agent/registration.py, the base of `Daemon`). `stop()`
(SIGTERM) cancels and awaits the loops without touching containers. The sign-in
verifier (agent/verifier.py) is one of the loops: it follows the reconciler's accepted
specs, so it answers from the saved desired set too.
Backup jobs (agent/backup_jobs.py) follow each assignments reply, after its reconcile
pass; they are never saved, so the first poll after a start asks for the current set
(after=0) to get pending jobs back. `stop()` interrupts and awaits running jobs.
The heartbeat and the long-poll after a failed one come a random share of their
period later (agent/client.py `after_failure`), so a fleet that lost its control
plane together does not beat and poll in step.
Registration and every heartbeat declare the features this agent implements
(agent/features.py), so an upgraded agent's new ones are known at its next beat.
Before any loop starts (so before any route is written), origin TLS (agent/origin_tls.py)
re-serves a saved certificate or else serves a file refusing every TLS handshake until
its loop has one signed; the loop keeps it fresh, and each heartbeat reports its expiry.
Reconcile passes come every RECONCILE_INTERVAL, or sooner when a failed user's backoff
ends, whichever pass recorded the failure (agent/pacing.py `next_pass`). While a
container starts, heartbeats come every tenth of the interval (`next_beat`) and,
between them, the moment its health changes (agent/heartbeat.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from agent import client as cp
from agent import heartbeat
from agent.backup_jobs import BackupJobs
from agent.config import Settings
from agent.docker_objects import DockerError
from agent.features import FEATURES
from agent.host_config import LogLimit
from agent.host_resources import host_resources
from agent.metadata_block import MetadataBlock
from agent.origin_tls import OFF_CHECK_EVERY, OriginTls, OriginTlsError, Signer
from agent.pacing import MIN_PASS, next_beat, next_pass
from agent.reconcile import Reconciler
from agent.reconcile_steps import ReconcilerOptions
from agent.registration import EXIT_CONFIG, Fatal, Registration
from agent.runtime import DockerRuntime
from agent.state import StateError
from agent.traefik import RouteOptions
from agent.verifier import Verifier, serve
from agent.volumes import BlockVolumes
from shared.protocol import Heartbeat, HostReport
from shared.version import __version__

log = logging.getLogger("agent")

EXIT_OK = 0


class Daemon(Registration):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        logs = LogLimit(settings.container_log_mb, settings.container_log_files)
        self.runtime = DockerRuntime(
            settings.docker_host, timeout=settings.docker_timeout, logs=logs
        )
        self.reconciler = Reconciler(
            self.runtime,
            MetadataBlock(settings.iptables),
            ReconcilerOptions(
                health_gate=settings.health_gate,
                health_timeout=settings.health_timeout,
                stop_grace=settings.stop_grace,
                upgrade_retry=settings.upgrade_retry,
                backoff_base=settings.backoff_base,
                backoff_max=settings.backoff_max,
                traefik_dir=settings.traefik_dynamic_dir,
                route_options=RouteOptions(
                    settings.traefik_entrypoints,
                    settings.traefik_tls,
                    settings.traefik_cert_resolver,
                    settings.auth_port,
                    settings.traefik_client_address,
                ),
            ),
            volumes=BlockVolumes(
                settings.state_dir / "mounts",
                settings.loop_volume_dir or settings.state_dir / "volumes",
            ),
        )
        self.verifier = Verifier(spent=settings.state_dir / "signin-spent")
        # A job mounts its volume when no spec does (a restore after a restart), and
        # the reconciler keeps it mounted while the job is known.
        self.backups = BackupJobs(
            settings.state_dir / "mounts", self.runtime, mount=self.reconciler.mount_for_job
        )
        self.reconciler.job_volumes = self.backups.volume_ids
        self.origin_tls = OriginTls(
            settings.state_dir,
            settings.traefik_dynamic_dir,
            traefik_group=settings.traefik_group,
            routers_tls=settings.traefik_tls,
        )
        self.reconciler.on_specs = self.verifier.set_specs
        self._stop = asyncio.Event()
        self._docker_version: str | None = None

    # -- loops ----------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        await self._registered.wait()
        attempt = 0
        while True:
            try:
                beat = await self._build_heartbeat()
                assert self.creds is not None
                reply = await self.client.heartbeat(self.creds.worker_id, self.creds.secret, beat)
            except cp.ControlPlaneError as err:
                attempt = await self._after_failure("heartbeat", err, attempt)
                continue
            failed, attempt = attempt > 0, 0
            if reply.heartbeat_interval > 0:
                self.heartbeat_interval = reply.heartbeat_interval
            delay = cp.jittered(next_beat(self.heartbeat_interval, beat))
            await heartbeat.until_due(
                cp.after_failure(delay, failed), beat.containers, self.reconciler.reports
            )

    async def _poll_loop(self) -> None:
        await self._registered.wait()
        attempt = 0
        # The first poll asks for the current set whatever was saved: backup jobs are
        # never saved, so a restarted agent gets its pending ones back at once.
        after = 0
        while True:
            try:
                assert self.creds is not None
                wait = cp.poll_wait(self.s.poll_wait, failed=attempt > 0)
                got = await self.client.assignments(
                    self.creds.worker_id, self.creds.secret, after, wait
                )
                attempt = 0
            except cp.ControlPlaneError as err:
                attempt = await self._after_failure("assignments poll", err, attempt)
                continue
            if got is None:
                continue
            if got.generation <= self.reconciler.applied_generation and self.reconciler.desired:
                # Only the first poll sees an older set (after a control-plane restore):
                # its jobs are current, its containers wait for a newer generation as before.
                self.backups.update(got.backups)
                after = self.reconciler.applied_generation
                continue
            log.info(
                "assignments generation %d: %d containers, %d purges, %d backup jobs",
                got.generation,
                len(got.containers),
                len(got.purge),
                len(got.backups),
            )
            self.store.save_desired(got)
            try:
                await self.reconciler.reconcile(got)
            except DockerError as exc:
                log.error("reconcile failed: %s", exc)
            # After the pass: a restore that comes with its user's spec withheld finds
            # the container removed (the pass keeps the job's volume mounted).
            self.backups.update(got.backups)
            after = got.generation

    async def _reconcile_loop(self) -> None:
        attempt = 0
        while True:
            try:
                await self.reconciler.reconcile()
                attempt = 0
                retry = self.reconciler.next_retry()
                delay = next_pass(cp.jittered(self.s.reconcile_interval), retry)
            except DockerError as exc:
                delay = min(
                    self.s.reconcile_interval,
                    cp.backoff_delay(attempt, self.s.backoff_base, self.s.backoff_max),
                )
                attempt += 1
                log.error("reconcile failed: %s; retry in %.1fs", exc, delay)
            await self._until_next_pass(delay)

    async def _until_next_pass(self, delay: float) -> None:
        """Sleeps `delay`, cut short when another pass (the long-poll's, with new
        assignments) records a failure due sooner: a move's spec that found no device
        yet is retried at its backoff, not when this loop's interval ends."""
        end = time.monotonic() + delay
        failed = self.reconciler.failed
        while (left := end - time.monotonic()) > 0:
            failed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await failed.wait()
            retry = self.reconciler.next_retry()
            if retry is not None:
                end = min(end, time.monotonic() + max(MIN_PASS, retry))

    async def _verifier_loop(self) -> None:
        """Serves the sign-in verifier on 127.0.0.1:AUTH_PORT; a taken port is logged
        and retried (containers keep running; only gated sign-ins wait)."""
        attempt = 0
        while True:
            try:
                runner = await serve(self.verifier, self.s.auth_port)
                break
            except OSError as exc:
                delay = cp.backoff_delay(attempt, self.s.backoff_base, self.s.backoff_max)
                log.error(
                    "sign-in verifier on 127.0.0.1:%d: %s; retry in %.1fs",
                    self.s.auth_port,
                    exc.strerror,
                    delay,
                )
                attempt += 1
                await asyncio.sleep(delay)
        log.info("sign-in verifier listening on 127.0.0.1:%d", self.s.auth_port)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    def _signer(self) -> Signer:
        assert self.creds is not None
        worker, secret = self.creds.worker_id, self.creds.secret
        return Signer(
            lambda: self.client.origin_tls_policy(worker, secret),
            lambda req: self.client.origin_certificate(worker, secret, req),
        )

    async def _origin_tls_loop(self) -> None:
        """Keeps Traefik's origin certificate signed and fresh (agent/origin_tls.py);
        a failure is retried with backoff and never touches the certificate served."""
        await self._registered.wait()
        attempt = 0
        while True:
            try:
                delay = await self.origin_tls.check(self._signer())
                attempt = 0
            except cp.ControlPlaneError as err:
                if err.status != 404:
                    attempt = await self._after_failure("origin TLS", err, attempt)
                    continue
                delay = OFF_CHECK_EVERY  # a control plane older than origin TLS
                with contextlib.suppress(OSError):
                    self.origin_tls.off()
            except (OriginTlsError, OSError, ValueError) as exc:
                delay = cp.backoff_delay(attempt, self.s.backoff_base, self.s.backoff_max)
                log.error("origin TLS: %s; retry in %.1fs", exc, delay)
                attempt += 1
            await asyncio.sleep(cp.jittered(delay))

    def _prepare_origin_tls(self) -> int | None:
        """Before any loop writes a route: fail closed until a certificate is served;
        an exit status when Traefik's TLS file cannot be written (routes then served on
        443 would take any client: better no agent, restarted by systemd, than that)."""
        try:
            done = self.origin_tls.prepare()
        except (OSError, ValueError) as exc:
            log.error("origin TLS: cannot write Traefik's TLS file: %s", exc)
            return EXIT_CONFIG
        if done == "saved":
            log.info("origin TLS: serving the saved certificate")
        elif done == "closed":
            log.info("origin TLS: no certificate yet; TLS handshakes refused until one is signed")
        return None

    async def _build_heartbeat(self) -> Heartbeat:
        try:
            containers = await self.reconciler.reports()
            if self._docker_version is None:
                self._docker_version = await self.runtime.version()
                self._disk_path = await self.runtime.root_dir()
        except DockerError as exc:
            log.warning("docker unavailable for heartbeat: %s", exc)
            self._docker_version = None
            containers = []
        try:
            volumes = await self.reconciler.volume_reports()
        except OSError as exc:
            log.warning("volumes unreadable for heartbeat: %s", exc)
            volumes = []
        return Heartbeat(
            agent_version=__version__,
            applied_generation=self.reconciler.applied_generation,
            resources=host_resources(self._disk_path),
            containers=containers,
            host=HostReport(
                docker_version=self._docker_version,
                metadata_blocked=self.reconciler.metadata_blocked,
                origin_cert_expires=self.origin_tls.expires_at(),
            ),
            volumes=volumes,
            backups=self.backups.reports(),
            features=list(FEATURES),
        )

    # -- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def _restore(self) -> int | None:
        """The credentials and the desired set kept in STATE_DIR; an exit status when
        the agent cannot start from them."""
        try:
            self.store.ensure_dir()
            self._set_creds(self.store.load_credentials())
            self.reconciler.desired = self.store.load_desired()
        except (StateError, OSError) as exc:
            log.error("state: %s", exc)
            return EXIT_CONFIG
        if self.creds is None and self.bootstrap_token() is None:
            log.error(
                "BOOTSTRAP_TOKEN: required on first start (no credentials in %s)", self.s.state_dir
            )
            return EXIT_CONFIG
        if self.creds is not None:
            self._registered.set()
            if self._token_file is not None and self._token_file.exists():
                self._forget_token()  # already registered: the token is no longer needed
        if self.reconciler.desired is not None:
            # Sign-ins work from the saved desired set before anything else answers.
            self.verifier.set_specs(self.reconciler.desired.containers)
            log.info(
                "restored desired set generation %d (%d containers)",
                self.reconciler.desired.generation,
                len(self.reconciler.desired.containers),
            )
        return None

    async def run(self) -> int:
        cannot_start = self._restore()
        if cannot_start is not None:
            return cannot_start
        cannot_start = self._prepare_origin_tls()
        if cannot_start is not None:
            return cannot_start

        async def register_once() -> None:
            if self.creds is None:
                await self._register()
                self._registered.set()

        loops: list[Callable[[], Coroutine[Any, Any, None]]] = [
            register_once,
            self._verifier_loop,
            self._origin_tls_loop,
            self._reconcile_loop,
            self._heartbeat_loop,
            self._poll_loop,
        ]
        tasks = [asyncio.create_task(fn(), name=fn.__name__) for fn in loops]
        stopper = asyncio.create_task(self._stop.wait(), name="stop")
        status = EXIT_OK
        pending: set[asyncio.Task[None] | asyncio.Task[bool]] = {*tasks, stopper}
        try:
            while True:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if stopper in done:
                    log.info("stopping (containers left as they are)")
                    break
                fatal = None
                for task in done:
                    failure = task.exception()
                    if isinstance(failure, Fatal):
                        fatal = failure
                    elif failure is not None:
                        log.error("loop %s crashed: %r", task.get_name(), failure)
                        fatal = Fatal(1, f"internal error in {task.get_name()}")
                if fatal is not None:
                    log.error("%s", fatal)
                    status = fatal.status
                    break
                if not pending - {stopper}:
                    break
        finally:
            for task in pending:
                task.cancel()
            await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), timeout=5)
            await self.backups.close()  # interrupts restic, waits for it to exit
            await self.reconciler.close()
            await self.client.close()
            self.runtime.close()
        return status
