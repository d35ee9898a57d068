"""Hetzner Cloud provider: worker servers here, users' volumes in hetzner_volumes.py (hcloud).

Contract (on top of `control.capacity.providers.base`):
- `validate()` runs once at start-up. It checks the token (401 -> kind "invalid"), every
  configured location, every configured server type and which (type, location) pairs can
  be ordered (`plan_pairs`, control/capacity/providers/hetzner_catalog.py), the SSH key
  names, and reads the volume price (GET /pricing; a failed read leaves it None).
- `pairs()` is the ordered list of valid (type, location) pairs for the autoscaler to try:
  type-major, in the order of `HETZNER_SERVER_TYPE` and `HETZNER_LOCATION`. A type that
  is merely sold out right now stays in the list: create answers `resource_unavailable`
  and the autoscaler moves on to the next pair.
- `create()` is idempotent by name: it looks the name up first, and again after a
  `uniqueness_error`, a timeout or any transient failure, and adopts the server it finds
  (only when it carries every requested label; otherwise it is someone else's server and
  that is an "invalid" error). An adopted server keeps its own type and location, which
  may differ from the request's. `create()` does not wait for the server to boot (the
  agent registering is what tells us it is up), but an action that already failed in the
  create response is an error of kind "unavailable"; the broken server is deleted first
  so that a retry under the same name does not adopt it.
- `delete()` treats 404 as success and does not wait for the delete action.
- `list()` follows pagination (`meta.pagination.next_page`).
- Errors are ProviderErrors built by control/capacity/providers/hetzner_errors.py (the
  `classify` table, correlation id, `retry_after` for 429). `rate_limit_limit`,
  `rate_limit_remaining` and `rate_limit_reset` (epoch seconds) follow the latest
  response's `RateLimit-*` headers (control/capacity/providers/hetzner_ratelimit.py).
- Every call respects the bucket (`RateBudget.hold`): after a 429, or a reply saying no
  request is left, calls wait until one is available (up to `timeout` or BUDGET_WAIT,
  whichever is longer: a validation's or create's few calls in a row must get through a
  slowly refilling bucket), or fail at once with kind "rate_limited".

hcloud is synchronous: every call runs on a small dedicated thread pool (shut down by
`close()`) under `asyncio.timeout`, and hcloud's own per-request timeout is set too.
Two small reaches into hcloud internals, both guarded: hcloud's built-in retries are
switched off because the autoscaler owns retries and back-off; and a `requests` response
hook on hcloud's session reads the HTTP status and the `RateLimit-*`/`X-Correlation-Id`
headers, which hcloud does not expose. The API token is never logged nor put into an
error message.
"""

from __future__ import annotations

import builtins
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import requests
from hcloud import Client
from hcloud.images import Image
from hcloud.locations import Location
from hcloud.server_types import ServerType as HServerType
from hcloud.servers import Server
from hcloud.ssh_keys import SSHKey

from control.capacity.providers import hetzner_calls
from control.capacity.providers.base import (
    CreateRequest,
    ProviderError,
    ProviderServer,
    ServerType,
)
from control.capacity.providers.hetzner_catalog import (
    TypeInfo,
    check_labels,
    check_name,
    plan_pairs,
    to_server,
    type_infos,
)
from control.capacity.providers.hetzner_errors import action_error
from control.capacity.providers.hetzner_ratelimit import RateBudget
from control.capacity.providers.hetzner_volumes import HetznerVolumes

log = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_PAGES = 200  # 200 pages x 50 servers: far beyond any fleet; bounds a buggy next_page loop
_USER_DATA_MAX = 32 * 1024  # the API's limit on user_data


class HetznerProvider(HetznerVolumes):
    """The `Provider` for Hetzner Cloud (see the module docstring for the contract)."""

    name = "hetzner"
    bills_hourly = True  # per started hour, up to a monthly cap
    max_servers: int | None = None
    page_size = 50  # the API's maximum per_page; tests lower it to exercise pagination

    def __init__(
        self,
        token: str,
        endpoint: str,
        server_types: tuple[str, ...],
        locations: tuple[str, ...],
        image: str = "ubuntu-24.04",
        ssh_keys: tuple[str, ...] = (),
        timeout: float = 30.0,
        budget: RateBudget | None = None,  # tests pass one with their clock
    ) -> None:
        if not token:
            raise ProviderError("HETZNER_API_TOKEN is empty", kind="invalid")
        if not server_types:
            raise ProviderError("HETZNER_SERVER_TYPE: no server type given", kind="invalid")
        if not locations:
            raise ProviderError("HETZNER_LOCATION: no location given", kind="invalid")
        if timeout <= 0:
            raise ProviderError("timeout must be positive", kind="invalid")
        self.server_types = server_types
        self.locations = locations
        self.image = image
        self.ssh_keys = ssh_keys
        self.timeout = timeout
        self.budget = budget or RateBudget()
        self._types: dict[str, TypeInfo] = {}
        self._pairs: builtins.list[tuple[str, str]] = []
        self._validated = False
        self._closed = False
        self._client = Client(
            token=token,
            api_endpoint=endpoint.rstrip("/"),
            application_name="clawfleet",
            timeout=timeout,
        )
        base = self._client._client
        # The autoscaler owns retries: hcloud's would sleep up to minutes inside a worker
        # thread and would retry a timed-out POST /servers behind our back.
        if not hasattr(base, "_retry_max_retries") or not hasattr(base, "_session"):
            raise RuntimeError("unsupported hcloud version: ClientBase internals changed")
        base._retry_max_retries = 0
        self._session: requests.Session = base._session
        self._session.hooks["response"].append(self.budget.observe)
        # Small on purpose: the autoscaler makes few calls, and a stuck call holds a thread
        # only until hcloud's own request timeout fires.
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hcloud")

    @property
    def rate_limit_limit(self) -> int | None:
        return self.budget.limit

    @property
    def rate_limit_remaining(self) -> int | None:
        return self.budget.remaining

    @property
    def rate_limit_reset(self) -> float | None:
        return self.budget.reset

    # -- the Provider interface ------------------------------------------------------

    async def validate(self) -> None:
        types = await self._call(self._load_server_types, what="list server types")
        locations = await self._call(self._load_locations, what="list locations")
        pairs, warnings = plan_pairs(types, locations, self.server_types, self.locations)
        for warning in warnings:
            log.warning("hetzner: %s", warning)
        for key in self.ssh_keys:
            found = await self._call(self._ssh_key_exists, key, what=f"look up SSH key {key}")
            if not found:
                raise ProviderError(
                    f"HETZNER_SSH_KEYS: no SSH key named {key!r} in the Hetzner project",
                    kind="invalid",
                )
        await self._read_volume_price()  # never raises: a price is for display only
        self._types, self._pairs = types, pairs
        self._validated = True
        log.info("hetzner: validated; pairs in order: %s", self._pairs_text())

    def pairs(self) -> builtins.list[tuple[str, str]]:
        """Valid (server type, location) pairs in order of preference (after `validate`)."""
        return list(self._pairs)

    def server_type(self, name: str) -> ServerType:
        info = self._types.get(name)
        if info is None:
            raise ProviderError(
                f"unknown server type {name!r} (known after validate(): "
                f"{', '.join(sorted(self._types)) or 'none'})",
                kind="invalid",
            )
        where = [loc for (t, loc) in self._pairs if t == name] + list(self.locations)
        price = next((info.prices[loc] for loc in where if loc in info.prices), None)
        return ServerType(
            name=info.name,
            cpus=info.cpus,
            memory_mb=info.memory_mb,
            disk_gb=info.disk_gb,
            hourly_price=price,
        )

    async def create(self, request: CreateRequest) -> ProviderServer:
        check_labels(request.labels)
        check_name(request.name)
        if len(request.user_data.encode()) > _USER_DATA_MAX:
            raise ProviderError("user data is larger than 32 KiB", kind="invalid")
        if self._validated and (request.server_type, request.location) not in self._pairs:
            raise ProviderError(
                f"{request.server_type} in {request.location} is not a valid pair; "
                f"valid: {self._pairs_text()}",
                kind="invalid",
            )
        existing = await self._find(request.name)
        if existing is not None:
            return self._adopt(existing, request)
        try:
            server, failed = await self._call(
                self._create_server, request, what=f"create server {request.name}"
            )
        except ProviderError as exc:
            if exc.code != "uniqueness_error" and exc.kind != "transient":
                raise
            # The server may exist anyway: a timed-out or 5xx POST can still have created
            # it, and uniqueness_error means the name is taken. Look before reporting.
            try:
                existing = await self._find(request.name)
            except ProviderError:
                raise exc from None
            if existing is None:
                raise
            log.info("hetzner: adopted %s after %s on create", request.name, exc.code)
            return self._adopt(existing, request)
        if failed is not None:
            await self._discard_failed(server, request, failed)
        return server

    async def delete(self, provider_id: str) -> None:
        try:
            server_id = int(provider_id)
        except ValueError:
            raise ProviderError(
                f"not a Hetzner server id: {provider_id!r}", kind="invalid"
            ) from None
        try:
            await self._call(self._delete_server, server_id, what=f"delete server {server_id}")
        except ProviderError as exc:
            if exc.kind != "not_found":
                raise

    async def list(self, labels: dict[str, str]) -> list[ProviderServer]:
        check_labels(labels)
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or None
        found: dict[str, ProviderServer] = {}
        page: int | None = 1
        for _ in range(_MAX_PAGES):
            servers, page = await self._call(self._list_page, selector, page, what="list servers")
            for server in servers:  # a server created mid-listing can shift pages: dedupe
                found.setdefault(server.provider_id, server)
            if page is None:
                return builtins.list(found.values())
        raise ProviderError(
            f"listing servers did not end after {_MAX_PAGES} pages", kind="transient"
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._session.close()

    # -- helpers running on the event loop ------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any, what: str) -> T:
        """Run a blocking hcloud call on the pool, bounded by `self.timeout`."""
        if self._closed:
            raise ProviderError("Hetzner provider is closed", kind="invalid")
        # A timed-out call may still take effect (hence create's look-up by name).
        job = functools.partial(fn, *args)
        return await hetzner_calls.call(self.budget, self._executor, self.timeout, job, what)

    async def _find(self, name: str) -> ProviderServer | None:
        return await self._call(self._find_by_name, name, what=f"look up server {name}")

    def _adopt(self, server: ProviderServer, request: CreateRequest) -> ProviderServer:
        foreign = {k: v for k, v in request.labels.items() if server.labels.get(k) != v}
        if foreign:
            raise ProviderError(
                f"a server named {request.name} already exists (id {server.provider_id}) "
                f"but its labels differ for {', '.join(sorted(foreign))}: not adopting it",
                kind="invalid",
                code="uniqueness_error",
            )
        return server

    async def _discard_failed(
        self, server: ProviderServer, request: CreateRequest, failed: ProviderError
    ) -> None:
        cleanup = "deleted it"
        try:
            await self.delete(server.provider_id)
        except ProviderError as exc:
            cleanup = f"could not delete it ({exc}); a retry will adopt the broken server"
            log.error("hetzner: failed server %s left behind: %s", request.name, exc)
        raise ProviderError(
            f"{failed.message}; {cleanup}",
            kind=failed.kind,
            code=failed.code,
            upstream_status=failed.upstream_status,
            correlation_id=failed.correlation_id,
        )

    def _pairs_text(self) -> str:
        return ", ".join(f"{t}@{loc}" for t, loc in self._pairs) or "none"

    # -- blocking code, run on the pool ---------------------------------------------

    def _load_server_types(self) -> dict[str, TypeInfo]:
        return type_infos(self._client.server_types.get_all())

    def _load_locations(self) -> builtins.list[str]:
        return [str(loc.data_model.name) for loc in self._client.locations.get_all()]

    def _ssh_key_exists(self, name: str) -> bool:
        return self._client.ssh_keys.get_by_name(name) is not None

    def _find_by_name(self, name: str) -> ProviderServer | None:
        servers, _ = self._client.servers.get_list(name=name)
        # `name` filters exactly, but be strict in case a proxy or fake is sloppy.
        matches = [s for s in servers if s.data_model.name == name]
        return to_server(matches[0].data_model) if matches else None

    def _list_page(
        self, selector: str | None, page: int
    ) -> tuple[builtins.list[ProviderServer], int | None]:
        servers, meta = self._client.servers.get_list(
            label_selector=selector, page=page, per_page=self.page_size
        )
        pagination = meta.pagination if meta is not None else None
        next_page = pagination.next_page if pagination is not None else None
        return [to_server(s.data_model) for s in servers], (next_page or None)

    def _create_server(self, request: CreateRequest) -> tuple[ProviderServer, ProviderError | None]:
        response = self._client.servers.create(
            name=request.name,
            server_type=HServerType(name=request.server_type),
            image=Image(name=self.image),
            location=Location(name=request.location),
            ssh_keys=[SSHKey(name=key) for key in self.ssh_keys] or None,
            user_data=request.user_data,
            labels=dict(request.labels),
            start_after_create=True,
        )
        server = to_server(response.server.data_model)
        reply = self.budget.reply()
        failed = None
        for action in [response.action, *(response.next_actions or [])]:
            model = action.data_model
            if model.status == "error":
                code, message = action_error(model.error)
                failed = ProviderError(
                    f"Hetzner API: {model.command} for {request.name} failed at once: {message}",
                    kind="unavailable",
                    code=code,
                    upstream_status=reply.status or None,
                    correlation_id=reply.correlation_id,
                )
                break
        return server, failed

    def _delete_server(self, server_id: int) -> None:
        action = self._client.servers.delete(Server(id=server_id))
        model = action.data_model
        if model.status == "error":
            code, message = action_error(model.error)
            raise ProviderError(
                f"Hetzner API: delete of server {server_id} failed: {message}",
                kind="transient",
                code=code,
            )
