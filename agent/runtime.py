"""Thin async wrappers over docker-py.

Contract: every Docker call runs in the runtime's own small thread pool with an
explicit timeout (`asyncio.timeout`), so a hung engine never blocks the event loop or
shutdown, and a cancelled caller is always cancelled. The agent only ever lists objects carrying `clawfleet.managed=true`, acts only
on those its `Owner` claims (agent/ownership.py: its worker id and cluster), and acts on
the ids it inspected, never on names it guessed. `create` is the one place
the tenant isolation profile is written down (docs/agent.md, "Isolation profile"),
logs bounded by `LogLimit` included (a tenant printing without end must not fill the
worker's disk that every other tenant shares), and it refuses any user that is not numeric `uid:gid` with both ids non-zero. A spec with a
block volume gets bind mounts of the directories the caller made on it (agent/volumes.py)
and never a named volume: without those directories it is refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import docker
import docker.errors

from agent.docker_objects import (
    LABEL_GENERATION,
    LABEL_HASH,
    LABEL_IMAGE,
    DockerError,
    ForeignObjectError,
    Observed,
    Tagged,
    observed_from_inspect,
    owned_labels,
)
from agent.host_config import DEFAULT_LOGS, LogLimit, cpu_options, mounts
from agent.ownership import (
    LABEL_MANAGED,
    LABEL_USER,
    Owner,
    claims,
    network_name,
)
from agent.volumes import volume_labels
from shared.names import parse_container_user
from shared.protocol import ContainerSpec

T = TypeVar("T")

MANAGED_FILTER = f"{LABEL_MANAGED}=true"


class DockerRuntime:
    def __init__(
        self, docker_host: str | None, *, timeout: float = 60.0, logs: LogLimit = DEFAULT_LOGS
    ) -> None:
        self._docker_host = docker_host
        self._timeout = timeout
        self._logs = logs
        self._pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="docker")
        self._client: docker.DockerClient | None = None

    # -- plumbing -------------------------------------------------------------------------

    def _api(self) -> Any:
        if self._client is None:
            if self._docker_host:
                client = docker.DockerClient(
                    base_url=self._docker_host, version="auto", timeout=int(self._timeout)
                )
            else:
                client = docker.from_env(version="auto", timeout=int(self._timeout))
            self._client = client
        return self._client.api

    def _reset(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: S110 - a broken client is discarded either way
                pass

    async def _api_call(
        self, method: str, *args: Any, call_timeout: float | None = None, **kwargs: Any
    ) -> Any:
        def call() -> Any:
            return getattr(self._api(), method)(*args, **kwargs)

        call.__name__ = method
        return await self._run(call, limit=call_timeout)

    async def _run(self, fn: Callable[..., T], *args: Any, limit: float | None = None) -> T:
        loop = asyncio.get_running_loop()

        def call() -> T:
            try:
                return fn(*args)
            except docker.errors.NotFound:
                raise
            except docker.errors.APIError as exc:
                raise DockerError(str(exc.explanation or exc)) from None
            except docker.errors.DockerException as exc:
                self._reset()
                raise DockerError(f"docker: {exc}") from None
            except (OSError, ConnectionError) as exc:
                self._reset()
                raise DockerError(f"docker unreachable: {exc}") from None

        future = loop.run_in_executor(self._pool, call)
        try:
            # Not asyncio.wait_for: on Python 3.11 it returns the result, swallowing the
            # task's cancellation, when the call ends as the cancel arrives (a stopping
            # agent's reconcile loop then slept on for a whole interval).
            async with asyncio.timeout(limit or self._timeout):
                return await future
        except TimeoutError:
            raise DockerError(f"docker call {fn.__name__} timed out") from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._reset()

    # -- reads ----------------------------------------------------------------------------

    def _list_managed(self) -> list[Observed]:
        api = self._api()
        found: list[Observed] = []
        for summary in api.containers(all=True, filters={"label": MANAGED_FILTER}):
            try:
                found.append(observed_from_inspect(api.inspect_container(summary["Id"])))
            except docker.errors.NotFound:
                continue  # removed between list and inspect
        return found

    async def list_managed(self) -> list[Observed]:
        return await self._run(self._list_managed)

    async def inspect(self, container_id: str) -> Observed | None:
        try:
            data = await self._api_call("inspect_container", container_id)
        except docker.errors.NotFound:
            return None
        return observed_from_inspect(data)

    def _managed_networks(self) -> list[Tagged]:
        nets = self._api().networks(filters={"label": MANAGED_FILTER})
        return [Tagged(str(n["Id"]), str(n.get("Name", "")), n.get("Labels") or {}) for n in nets]

    async def managed_networks(self) -> list[Tagged]:
        """Every managed network on the engine; the caller keeps those it owns."""
        return await self._run(self._managed_networks)

    def _managed_volumes(self) -> list[Tagged]:
        reply = self._api().volumes(filters={"label": MANAGED_FILTER}) or {}
        vols = reply.get("Volumes") or []
        return [Tagged(str(v["Name"]), str(v["Name"]), v.get("Labels") or {}) for v in vols]

    async def managed_volumes(self) -> list[Tagged]:
        """Every managed volume on the engine; the caller keeps those it owns."""
        return await self._run(self._managed_volumes)

    async def version(self) -> str:
        info = await self._api_call("version", call_timeout=10)
        return str(info.get("Version", ""))

    async def root_dir(self) -> str:
        info = await self._api_call("info", call_timeout=10)
        return str(info.get("DockerRootDir", "/"))

    # -- images ---------------------------------------------------------------------------

    async def image_present(self, ref: str) -> bool:
        try:
            await self._api_call("inspect_image", ref)
        except docker.errors.NotFound:
            return False
        return True

    def _pull(self, ref: str) -> None:
        repo, tag = docker.utils.parse_repository_tag(ref)
        for event in self._api().pull(repo, tag=tag or "latest", stream=True, decode=True):
            if isinstance(event, dict) and event.get("error"):
                raise DockerError(f"pull {ref}: {event['error']}")

    async def pull(self, ref: str, limit: float = 900.0) -> None:
        try:
            await self._run(self._pull, ref, limit=limit)
        except docker.errors.NotFound:
            raise DockerError(f"pull {ref}: not found") from None

    # -- per-user network and volumes -----------------------------------------------------

    def _ensure_network(self, user_id: str, owner: Owner) -> str:
        api = self._api()
        name = network_name(user_id)
        nets = api.networks(filters={"label": [MANAGED_FILTER, f"{LABEL_USER}={user_id}"]})
        for net in nets:
            legacy_ok = net.get("Name") == name  # called for a desired user only
            if claims(owner, net.get("Labels") or {}, legacy_ok=legacy_ok):
                return str(net["Id"])
        # Another agent's network of the same name makes this fail: refused, not taken.
        try:
            created = api.create_network(
                name, driver="bridge", labels=owned_labels(user_id, owner), check_duplicate=True
            )
        except docker.errors.NotFound as exc:
            # Docker answers 404 when its address pools are used up: this user waits with
            # the reason; it must not escape as "not found" and stop the agent's loop.
            raise DockerError(f"network {name}: {exc.explanation or exc}") from None
        return str(created["Id"])

    async def ensure_network(self, user_id: str, owner: Owner) -> str:
        return await self._run(self._ensure_network, user_id, owner)

    def _ensure_volume(self, user_id: str, name: str, owner: Owner) -> None:
        api = self._api()
        try:
            vol = api.inspect_volume(name)
        except docker.errors.NotFound:
            api.create_volume(name, labels=owned_labels(user_id, owner))
            return
        labels = vol.get("Labels") or {}
        if labels.get(LABEL_USER) != user_id or not claims(owner, labels, legacy_ok=True):
            raise ForeignObjectError(f"volume {name} exists and does not belong to {user_id}")

    async def ensure_volumes(self, spec: ContainerSpec, owner: Owner) -> None:
        if spec.volume is not None:
            return  # directories on the user's block volume instead (agent/volumes.py)
        for vol in spec.volumes:
            await self._run(self._ensure_volume, spec.user_id, vol.name, owner)

    def _owned_volume_dir(self, user_id: str, name: str, owner: Owner) -> str | None:
        try:
            vol = self._api().inspect_volume(name)
        except docker.errors.NotFound:
            return None
        labels = vol.get("Labels") or {}
        if labels.get(LABEL_USER) != user_id or not claims(owner, labels, legacy_ok=True):
            return None
        mountpoint = str(vol.get("Mountpoint") or "")
        return mountpoint if mountpoint.startswith("/") else None

    async def owned_volume_dir(self, user_id: str, name: str, owner: Owner) -> str | None:
        """The host directory of `user_id`'s Docker volume `name`, None when there is
        no such volume of theirs (what a block volume adopts, agent/volumes.py)."""
        return await self._run(self._owned_volume_dir, user_id, name, owner)

    def _volume_mountpoint(self, name: str) -> str:
        return str(self._api().inspect_volume(name).get("Mountpoint") or "")

    async def volume_mountpoint(self, name: str) -> str:
        """The host directory of a volume `ensure_volumes` has checked (the agent runs
        as root on the worker, so it can write there)."""
        mountpoint = await self._run(self._volume_mountpoint, name)
        if not mountpoint.startswith("/"):
            raise DockerError(f"volume {name} has no host directory")
        return mountpoint

    async def network_gateway(self, network_id: str) -> str:
        """The IPv4 gateway of a network: the address the host (and Traefik) has on it."""
        data = await self._api_call("inspect_network", network_id)
        for config in (data.get("IPAM") or {}).get("Config") or []:
            gateway = str(config.get("Gateway") or "")
            if gateway.count(".") == 3:
                return gateway
        raise DockerError(f"network {network_id[:12]} has no IPv4 gateway")

    async def remove_network(self, network_id: str) -> None:
        try:
            await self._api_call("remove_network", network_id)
        except docker.errors.NotFound:
            pass

    async def remove_volume(self, name: str) -> None:
        try:
            await self._api_call("remove_volume", name)
        except docker.errors.NotFound:
            pass

    # -- containers -----------------------------------------------------------------------

    def _create(
        self,
        spec: ContainerSpec,
        generation: int,
        network_id: str,
        owner: Owner,
        binds: Mapping[str, str],
    ) -> str:
        try:
            parse_container_user(spec.user)
        except ValueError as exc:
            # The last line of defence: whatever the control plane says, never root.
            raise DockerError(f"spec for {spec.user_id} refused: user {exc}") from None
        api = self._api()
        labels = dict(spec.labels)
        # Ownership labels last, so a spec can never overwrite them.
        labels.update(owned_labels(spec.user_id, owner))
        labels[LABEL_HASH] = spec.spec_hash
        labels[LABEL_GENERATION] = str(generation)
        labels[LABEL_IMAGE] = spec.image
        labels.update(volume_labels(spec.volume))
        ports = sorted({p.container_port for p in spec.ports} | {spec.health.port})
        host_config = api.create_host_config(
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            init=True,
            privileged=False,
            mem_limit=f"{spec.resources.memory_mb}m",
            memswap_limit=f"{spec.resources.memory_mb}m",
            **cpu_options(spec.resources),
            pids_limit=spec.resources.pids,
            restart_policy={"Name": "unless-stopped"},
            # Loopback only, host port chosen by Docker; Traefik is the only way in.
            port_bindings={f"{p}/tcp": ("127.0.0.1", None) for p in ports},
            mounts=mounts(spec, binds),
            network_mode=network_id,
            log_config=self._logs.config(),
        )
        networking = api.create_networking_config({network_id: api.create_endpoint_config()})
        created = api.create_container(
            spec.image,
            command=spec.command,
            user=spec.user,
            # Env travels in the API body only, never in argv or logs.
            environment=dict(spec.env),
            labels=labels,
            hostname=spec.hostname or None,
            ports=[(p, "tcp") for p in ports],
            host_config=host_config,
            networking_config=networking,
            name=spec.name,
        )
        return str(created["Id"])

    async def create(
        self,
        spec: ContainerSpec,
        generation: int,
        network_id: str,
        owner: Owner,
        binds: Mapping[str, str] | None = None,
    ) -> str:
        """`binds` (volume name -> host directory) replaces the spec's named volumes
        when it has a block volume; without it such a spec is refused, never given
        fresh named volumes."""
        return await self._run(self._create, spec, generation, network_id, owner, binds or {})

    async def start(self, container_id: str) -> None:
        await self._api_call("start", container_id)

    async def stop(self, container_id: str, grace: int) -> None:
        try:
            await self._api_call(
                "stop", container_id, call_timeout=grace + self._timeout, timeout=grace
            )
        except docker.errors.NotFound:
            pass

    async def remove(self, container_id: str) -> None:
        try:
            await self._api_call("remove_container", container_id, force=True)
        except docker.errors.NotFound:
            pass

    async def rename(self, container_id: str, name: str) -> None:
        await self._api_call("rename", container_id, name)
