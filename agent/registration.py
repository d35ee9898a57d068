"""Who this agent is to the control plane: its credentials, registration and
re-registration; `Registration` is the base of `Daemon` (agent/daemon.py).

Contract: registration declares the features this agent implements (agent/features.py)
and retries an unavailable control plane (unreachable, 5xx, 408/429) with capped
exponential backoff; refused, or with no bootstrap token, it stops the agent (`Fatal`,
EXIT_CONFIG). The credentials are saved in STATE_DIR before they are used, and the
bootstrap token is forgotten once used (its file deleted). After an auth error of any
loop: 403 (revoked) stops the agent with EXIT_REVOKED, containers left as they are; 401
unknown_worker re-registers only with a usable bootstrap token, and only once however
many loops learn it at the same time (the others then retry as the new worker). Other
failures are retried after the loop's backoff, with one log line each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path

from agent import client as cp
from agent.config import Settings
from agent.errors import AgentError
from agent.features import FEATURES
from agent.host_resources import host_resources
from agent.ownership import MAX_PREVIOUS, Owner
from agent.reconcile import Reconciler
from agent.state import Credentials, StateStore
from shared.protocol import RegisterRequest
from shared.version import PROTOCOL_VERSION, __version__

log = logging.getLogger("agent")

EXIT_CONFIG = 2
EXIT_REVOKED = 3
DEFAULT_HEARTBEAT = 10.0


class Fatal(AgentError):
    """The daemon must stop with exit `status` (no credentials, revoked)."""

    code = "fatal"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Registration:
    reconciler: Reconciler  # made by the Daemon; it acts as the registered worker

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.store = StateStore(settings.state_dir)
        self.client = cp.ControlClient(settings.control_url, timeout=settings.request_timeout)
        self.creds: Credentials | None = None
        self.heartbeat_interval = DEFAULT_HEARTBEAT
        self._token: str | None = settings.bootstrap_token
        self._token_file: Path | None = settings.bootstrap_token_file
        self._registered = asyncio.Event()
        # The poll and heartbeat loops can both learn at once that the control plane
        # forgot this worker: one re-registers, the other sees new credentials after it.
        self._reregistering = asyncio.Lock()
        # Docker's root directory once a heartbeat has asked: the disk registration reports.
        self._disk_path = "/"

    # -- credentials ----------------------------------------------------------------------

    def bootstrap_token(self) -> str | None:
        if self._token:
            return self._token
        if self._token_file is not None:
            try:
                token = self._token_file.read_text().strip()
            except OSError:
                return None
            return token or None
        return None

    def _forget_token(self) -> None:
        self._token = None
        if self._token_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self._token_file.unlink()
                log.info("deleted bootstrap token file %s", self._token_file)
        self._token_file = None

    async def _register(self) -> None:
        token = self.bootstrap_token()
        if token is None:
            raise Fatal(EXIT_CONFIG, "no stored credentials and no BOOTSTRAP_TOKEN")
        request = RegisterRequest(
            protocol=PROTOCOL_VERSION,
            agent_version=__version__,
            hostname=socket.gethostname(),
            resources=host_resources(self._disk_path),
            features=list(FEATURES),
        )
        attempt = 0
        while True:
            try:
                reply = await self.client.register(token, request)
                break
            except cp.ControlPlaneError as err:
                if not cp.is_transient(err):
                    raise Fatal(
                        EXIT_CONFIG, f"registration refused ({err.status} {err.code})"
                    ) from None
                delay = cp.backoff_delay(attempt, self.s.backoff_base, self.s.backoff_max)
                log.warning(
                    "registration: control plane unavailable (%s); retry in %.1fs", err, delay
                )
                attempt += 1
                await asyncio.sleep(delay)
        old = self.creds
        previous = (old.worker_id, *old.previous)[:MAX_PREVIOUS] if old else ()
        creds = Credentials(reply.worker_id, reply.secret, previous)
        self.store.save_credentials(creds)
        self._set_creds(creds)
        self.heartbeat_interval = reply.heartbeat_interval or DEFAULT_HEARTBEAT
        self._forget_token()
        log.info("registered as worker %s", reply.worker_id)

    def _set_creds(self, creds: Credentials | None) -> None:
        self.creds = creds
        if creds is not None:
            previous = frozenset(creds.previous) - {creds.worker_id}
            self.reconciler.owner = Owner(creds.worker_id, previous=previous)

    async def _handle_auth_error(self, err: cp.ControlPlaneError) -> bool:
        """True when the error was handled (re-registered); raises Fatal on revocation."""
        if cp.is_revoked(err):
            worker = self.creds.worker_id if self.creds else "?"
            raise Fatal(
                EXIT_REVOKED,
                f"worker {worker} revoked by the control plane; reconciling stopped, "
                "containers left as they are",
            )
        if cp.is_unknown_worker(err):
            return await self._reregister(self.creds.worker_id if self.creds else None)
        return False

    async def _reregister(self, refused_as: str | None) -> bool:
        async with self._reregistering:
            if self.creds is not None and self.creds.worker_id != refused_as:
                return True  # the other loop re-registered meanwhile: retry as that worker
            if self.bootstrap_token() is None:
                log.error("control plane does not know this worker and no bootstrap token is left")
                return False
            log.warning("control plane does not know this worker; re-registering")
            self.store.forget_credentials()
            self._registered.clear()
            await self._register()
            self._registered.set()
            return True

    async def _after_failure(self, what: str, err: cp.ControlPlaneError, attempt: int) -> int:
        """The retry rule of the loops that call the control plane: after an auth error
        that re-registered, retry at once; else one log line and the backoff of
        `attempt`. Returns the attempt number of the next failure."""
        if await self._handle_auth_error(err):
            return attempt
        delay = cp.backoff_delay(attempt, self.s.backoff_base, self.s.backoff_max)
        log.warning("%s failed (%s); retry in %.1fs", what, err, delay)
        await asyncio.sleep(delay)
        return attempt + 1
