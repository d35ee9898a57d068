"""Hetzner Cloud provider: creates, lists and deletes worker servers through hcloud-python.

Contract (on top of `control.capacity.providers.base`):
- `validate()` runs once at start-up. It checks the token (401 -> kind "invalid"), every
  configured location, every configured server type and which (type, location) pairs can
  be ordered, and the break-glass SSH key names. The rule:
    * an unknown location or an unknown server type is an error;
    * a server type that is deprecated in any configured location where it is offered is
      an error (it can, or soon will, no longer be ordered: remove it from the setting);
    * a (type, location) combination that is simply not offered (e.g. CX types in the US
      locations `ash`/`hil`) is skipped with a warning;
    * when no pair remains, that is an error.
  Every error message names the setting and what IS available in the location.
- `pairs()` is the ordered list of valid (type, location) pairs for the autoscaler to try:
  type-major (all locations of the first type, then the next type), both in the order of
  `HETZNER_SERVER_TYPE` and `HETZNER_LOCATION`. A type that is merely sold out right now
  (`available: false`) stays in the list: create answers `resource_unavailable` and the
  autoscaler moves on to the next pair.
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
- Errors map to kinds with `classify(status, code)`; `ProviderError` carries the API's
  code, message, HTTP status and `X-Correlation-Id`, and for 429 `retry_after`: the time
  until ONE request is available again (`shared.backoff.rate_limit_wait`: the bucket
  refills evenly, one request per second at 3600/hour; `RateLimit-Reset` is when it is
  FULL, an upper bound, never the wait itself). `rate_limit_limit`,
  `rate_limit_remaining` and `rate_limit_reset` (epoch seconds) follow the latest
  response's `RateLimit-*` headers (3600 requests/hour per project, shared with
  everything else on the project).
- Every call respects the bucket: after a 429, or a reply saying no request is left,
  calls wait until one is available (up to `timeout` or BUDGET_WAIT, whichever is
  longer: a validation's or create's few calls in a row must get through a slowly
  refilling bucket), or fail at once with kind "rate_limited" and that `retry_after`;
  none is sent into a known-empty bucket.

hcloud is synchronous: every call runs on a small dedicated thread pool (shut down by
`close()`) under `asyncio.wait_for`, and hcloud's own per-request timeout is set too.
Two small reaches into hcloud internals, both guarded: hcloud's built-in retries (up to 5
with sleeps of up to 60 s, including on POST timeouts) are switched off because the
autoscaler owns retries and back-off; and a `requests` response hook on hcloud's session
reads the HTTP status and the `RateLimit-*`/`X-Correlation-Id` headers, which hcloud does
not expose. The API token is never logged nor put into an error message.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import requests
from hcloud import APIException, Client
from hcloud.images import Image
from hcloud.locations import Location
from hcloud.server_types import ServerType as HServerType
from hcloud.servers import Server
from hcloud.ssh_keys import SSHKey

from control.capacity.providers.base import (
    CreateRequest,
    ErrorKind,
    ProviderError,
    ProviderServer,
    ServerType,
)
from shared.backoff import rate_limit_wait

log = logging.getLogger(__name__)

T = TypeVar("T")

BUDGET_WAIT = 5.0  # seconds a call may wait for the rate-limit bucket before failing
_MAX_PAGES = 200  # 200 pages x 50 servers: far beyond any fleet; bounds a buggy next_page loop
_USER_DATA_MAX = 32 * 1024  # the API's limit on user_data
_LABEL_PART = re.compile(r"^[a-zA-Z0-9]([-_.a-zA-Z0-9]*[a-zA-Z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_HOST_LABEL = re.compile(r"^[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?$")

# Codes whose meaning does not depend on the HTTP status they come with.
_CODE_KINDS: dict[str, ErrorKind] = {
    "resource_unavailable": "unavailable",  # 412: this type/location cannot be ordered now
    "placement_error": "unavailable",  # 422: no host for it in this location right now
    "resource_limit_exceeded": "limit",  # 403: project limit (servers, cores, ...)
    "rate_limit_exceeded": "rate_limited",  # 429
    "not_found": "not_found",  # 404
    "unauthorized": "invalid",  # 401: bad token
    "token_readonly": "invalid",  # 401: read-only token
    "forbidden": "invalid",  # 403
    "invalid_input": "invalid",  # 422
    "json_error": "invalid",  # 400
    "uniqueness_error": "invalid",  # 409: create() adopts before this surfaces
    "unsupported_error": "invalid",  # 422
    "protected": "invalid",  # 423: delete protection is on; retrying will not help
    "deprecated_api_endpoint": "invalid",  # 410
    "method_not_allowed": "invalid",  # 405
    "maintenance": "transient",  # 403: temporary by nature
    "conflict": "transient",  # 409: "the resource changed during the request, retry"
    "locked": "transient",  # 423: another action is running on it
    "service_error": "transient",  # 422: error within a service
    "server_error": "transient",  # 500
    "unavailable": "transient",  # 503: a service is temporarily unavailable
    "timeout": "transient",  # 504
    "connection_error": "transient",  # ours: the request did not get an answer
}


def classify(status: int, code: str) -> ErrorKind:
    """What the autoscaler should do about an API error.

    A known `code` decides (a 412 with another code, e.g. `primary_ip_version_mismatch`,
    is our mistake, not a sold-out pair); otherwise the HTTP status does. `status` 0 means
    no HTTP answer at all (timeout, connection error).
    """
    kind = _CODE_KINDS.get(code)
    if kind is not None:
        return kind
    if status == 0 or status == 408 or status >= 500:
        return "transient"
    if status == 429:
        return "rate_limited"
    if status == 404:
        return "not_found"
    return "invalid"


@dataclass(frozen=True)
class _Offer:
    """A server type in one location, as `/server_types` describes it."""

    deprecated: bool
    unavailable_after: datetime | None
    available: bool


@dataclass(frozen=True)
class _TypeInfo:
    name: str
    cpus: int
    memory_mb: int
    disk_gb: int
    prices: dict[str, float] = field(default_factory=dict)  # location -> hourly, net
    offers: dict[str, _Offer] = field(default_factory=dict)  # location -> offer


@dataclass
class _Reply:
    """What the response hook saw of the latest reply on this thread."""

    status: int = 0
    correlation_id: str | None = None
    reset: float | None = None
    limit: float | None = None
    remaining: float | None = None


def plan_pairs(
    types: Mapping[str, _TypeInfo],
    known_locations: Iterable[str],
    wanted_types: tuple[str, ...],
    wanted_locations: tuple[str, ...],
) -> tuple[list[tuple[str, str]], list[str]]:
    """The ordered valid (type, location) pairs and warnings about skipped ones.

    Raises ProviderError(kind="invalid") per the rule in the module docstring.
    """
    known = set(known_locations)
    for location in wanted_locations:
        if location not in known:
            raise ProviderError(
                f"HETZNER_LOCATION: {location} is not a Hetzner location; "
                f"known: {', '.join(sorted(known)) or 'none'}",
                kind="invalid",
            )
    for name in wanted_types:
        info = types.get(name)
        if info is None:
            raise ProviderError(
                f"HETZNER_SERVER_TYPE: {name} is not a Hetzner server type; "
                f"{_available_text(types, wanted_locations[0])}",
                kind="invalid",
            )
        for location in wanted_locations:
            offer = info.offers.get(location)
            if offer is None or not offer.deprecated:
                continue
            until = offer.unavailable_after
            if until is None or until <= datetime.now(UTC):
                how = "can no longer be ordered"
            else:
                how = f"can only be ordered until {until.date().isoformat()}"
            raise ProviderError(
                f"HETZNER_SERVER_TYPE: {name} is deprecated in {location} and {how}; "
                f"{_available_text(types, location)}",
                kind="invalid",
            )
    pairs: list[tuple[str, str]] = []
    warnings: list[str] = []
    for name in wanted_types:
        for location in wanted_locations:
            offer = types[name].offers.get(location)
            if offer is None:
                warnings.append(f"{name} is not offered in {location}: pair skipped")
                continue
            if not offer.available:
                warnings.append(f"{name} is currently out of stock in {location}")
            pairs.append((name, location))
    if not pairs:
        available = "; ".join(_available_text(types, location) for location in wanted_locations)
        raise ProviderError(
            "HETZNER_SERVER_TYPE/HETZNER_LOCATION: none of the listed server types "
            f"({', '.join(wanted_types)}) is offered in any listed location; {available}",
            kind="invalid",
        )
    return pairs, warnings


def _available_text(types: Mapping[str, _TypeInfo], location: str) -> str:
    names = sorted(
        info.name
        for info in types.values()
        if location in info.offers and not info.offers[location].deprecated
    )
    return f"available in {location}: {', '.join(names) or 'none'}"


def check_labels(labels: Mapping[str, str]) -> None:
    """Hetzner's label rules (see the API's "Labels"); raises ProviderError "invalid"."""
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        ok_prefix = not prefix or (
            len(prefix) <= 253 and all(_DNS_LABEL.fullmatch(part) for part in prefix.split("."))
        )
        if not (ok_prefix and len(name) <= 63 and _LABEL_PART.fullmatch(name)):
            raise ProviderError(f"invalid label key {key!r}", kind="invalid")
        if prefix == "hetzner.cloud" or prefix.endswith(".hetzner.cloud"):
            raise ProviderError(f"label key {key!r} uses a reserved prefix", kind="invalid")
        if len(value) > 63 or (value and not _LABEL_PART.fullmatch(value)):
            raise ProviderError(
                f"invalid value for label {key!r}: at most 63 characters, alphanumeric at "
                "both ends, with '-', '_', '.' between",
                kind="invalid",
            )


def _check_name(name: str) -> None:
    parts = name.split(".")
    if len(name) > 253 or not all(_HOST_LABEL.fullmatch(part) for part in parts):
        raise ProviderError(
            f"server name {name!r} is not a valid hostname (RFC 1123)", kind="invalid"
        )


def _float_header(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


class HetznerProvider:
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
        self.rate_limit_limit: int | None = None
        self.rate_limit_remaining: int | None = None
        self.rate_limit_reset: float | None = None
        self._types: dict[str, _TypeInfo] = {}
        self._pairs: builtins.list[tuple[str, str]] = []
        self._validated = False
        self._closed = False
        self._not_before = 0.0  # epoch seconds: no request before (rate limit)
        self._local = threading.local()
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
        self._session.hooks["response"].append(self._on_response)
        # Small on purpose: the autoscaler makes few calls, and a stuck call holds a thread
        # only until hcloud's own request timeout fires.
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hcloud")

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
        self._types = types
        self._pairs = pairs
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
        _check_name(request.name)
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
        await self._wait_for_budget(what)
        loop = asyncio.get_running_loop()
        job = functools.partial(self._run, fn, what, *args)
        try:
            result = await asyncio.wait_for(
                loop.run_in_executor(self._executor, job), timeout=self.timeout
            )
        except ProviderError as exc:
            if exc.kind == "rate_limited" and exc.retry_after is not None:
                self._not_before = max(self._not_before, time.time() + exc.retry_after)
            raise
        except TimeoutError:
            # The thread may still be waiting on the socket; hcloud's request timeout
            # frees it. The call itself may still take effect (hence create's look-up).
            raise ProviderError(
                f"Hetzner API: {what} did not answer within {self.timeout:g} s",
                kind="transient",
                code="timeout",
            ) from None
        if self.rate_limit_remaining == 0:  # the bucket is empty: wait for the next request
            self._not_before = max(self._not_before, time.time() + self._one_request_wait())
        return result

    def _one_request_wait(self) -> float:
        reset_in = None if self.rate_limit_reset is None else self.rate_limit_reset - time.time()
        return rate_limit_wait(
            self.rate_limit_limit, self.rate_limit_remaining, reset_in, rand=random.random()
        )

    async def _wait_for_budget(self, what: str) -> None:
        wait = self._not_before - time.time()
        if wait <= 0:
            return
        if wait > max(self.timeout, BUDGET_WAIT):
            raise ProviderError(
                f"Hetzner API: {what} held back: rate limited for {wait:.1f} s more",
                kind="rate_limited",
                code="rate_limit_exceeded",
                retry_after=wait,
            )
        await asyncio.sleep(wait)

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
            status=failed.status,
            correlation_id=failed.correlation_id,
        )

    def _pairs_text(self) -> str:
        return ", ".join(f"{t}@{loc}" for t, loc in self._pairs) or "none"

    # -- blocking code, run on the pool ---------------------------------------------

    def _run(self, fn: Callable[..., T], what: str, *args: Any) -> T:
        """Call `fn` and turn every failure into a ProviderError (on the worker thread,
        where the response hook left the status and headers of the failed reply)."""
        self._local.reply = _Reply()
        try:
            return fn(*args)
        except APIException as exc:
            raise self._api_error(exc, what) from None
        except requests.Timeout:
            raise ProviderError(
                f"Hetzner API: {what} timed out after {self.timeout:g} s",
                kind="transient",
                code="timeout",
            ) from None
        except requests.RequestException as exc:
            # The exception text names the URL (never the token, which is a header).
            raise ProviderError(
                f"Hetzner API: {what} failed: {type(exc).__name__}: {exc}",
                kind="transient",
                code="connection_error",
            ) from None

    def _api_error(self, exc: APIException, what: str) -> ProviderError:
        reply: _Reply = getattr(self._local, "reply", _Reply())
        # hcloud puts the HTTP status in `code` when the body is not the error envelope.
        status = exc.code if isinstance(exc.code, int) else reply.status
        code = exc.code if isinstance(exc.code, str) else ""
        kind = classify(status, code)
        message = f"Hetzner API: {what} failed: {exc.message}"
        if code == "unauthorized":
            message = f"Hetzner API rejected HETZNER_API_TOKEN while trying to {what}"
        elif code == "token_readonly":
            message = f"HETZNER_API_TOKEN is read-only; {what} needs a read/write token"
        retry_after = None
        if kind == "rate_limited":
            reset_in = None if reply.reset is None else max(0.0, reply.reset - time.time())
            retry_after = rate_limit_wait(
                reply.limit, reply.remaining, reset_in, rand=random.random()
            )
        return ProviderError(
            message,
            kind=kind,
            code=code or str(status),
            status=status or None,
            # hcloud >= 2.x sets correlation_id; the hook saw the header in any case.
            correlation_id=getattr(exc, "correlation_id", None) or reply.correlation_id,
            retry_after=retry_after,
        )

    def _on_response(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        """requests response hook: runs on the thread that made the request."""
        headers = response.headers
        reset = _float_header(headers, "RateLimit-Reset")
        limit = _float_header(headers, "RateLimit-Limit")
        remaining = _float_header(headers, "RateLimit-Remaining")
        self._local.reply = _Reply(
            status=response.status_code,
            correlation_id=headers.get("X-Correlation-Id"),
            reset=reset,
            limit=limit,
            remaining=remaining,
        )
        # Last reply wins: with a few concurrent calls the value can be one request stale.
        if limit is not None:
            self.rate_limit_limit = int(limit)
        if remaining is not None:
            self.rate_limit_remaining = int(remaining)
        if reset is not None:
            self.rate_limit_reset = reset

    def _load_server_types(self) -> dict[str, _TypeInfo]:
        types: dict[str, _TypeInfo] = {}
        for st in self._client.server_types.get_all():
            model: HServerType = st.data_model
            offers: dict[str, _Offer] = {}
            per_location = getattr(model, "locations", None)  # hcloud >= 2.6, current API
            if per_location is not None:
                for entry in per_location:
                    deprecation = entry.deprecation
                    offers[str(entry.location.name)] = _Offer(
                        deprecated=deprecation is not None,
                        unavailable_after=(
                            deprecation.unavailable_after if deprecation is not None else None
                        ),
                        available=entry.available is not False,
                    )
            else:  # an API without per-location details: the price list says where it is sold
                for price in model.prices or []:
                    offers[price["location"]] = _Offer(False, None, True)
            prices = {
                p["location"]: float(p["price_hourly"]["net"])
                for p in model.prices or []
                if p.get("price_hourly")
            }
            name = str(model.name)
            types[name] = _TypeInfo(
                name=name,
                cpus=int(model.cores or 0),
                memory_mb=round(float(model.memory or 0) * 1024),  # the API says GB
                disk_gb=int(model.disk or 0),
                prices=prices,
                offers=offers,
            )
        return types

    def _load_locations(self) -> builtins.list[str]:
        return [str(loc.data_model.name) for loc in self._client.locations.get_all()]

    def _ssh_key_exists(self, name: str) -> bool:
        return self._client.ssh_keys.get_by_name(name) is not None

    def _find_by_name(self, name: str) -> ProviderServer | None:
        servers, _ = self._client.servers.get_list(name=name)
        # `name` filters exactly, but be strict in case a proxy or fake is sloppy.
        matches = [s for s in servers if s.data_model.name == name]
        return _to_server(matches[0].data_model) if matches else None

    def _list_page(
        self, selector: str | None, page: int
    ) -> tuple[builtins.list[ProviderServer], int | None]:
        servers, meta = self._client.servers.get_list(
            label_selector=selector, page=page, per_page=self.page_size
        )
        pagination = meta.pagination if meta is not None else None
        next_page = pagination.next_page if pagination is not None else None
        return [_to_server(s.data_model) for s in servers], (next_page or None)

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
        server = _to_server(response.server.data_model)
        reply: _Reply = getattr(self._local, "reply", _Reply())
        failed = None
        for action in [response.action, *(response.next_actions or [])]:
            model = action.data_model
            if model.status == "error":
                code, message = _action_error(model.error)
                failed = ProviderError(
                    f"Hetzner API: {model.command} for {request.name} failed at once: {message}",
                    kind="unavailable",
                    code=code,
                    status=reply.status or None,
                    correlation_id=reply.correlation_id,
                )
                break
        return server, failed

    def _delete_server(self, server_id: int) -> None:
        action = self._client.servers.delete(Server(id=server_id))
        model = action.data_model
        if model.status == "error":
            code, message = _action_error(model.error)
            raise ProviderError(
                f"Hetzner API: delete of server {server_id} failed: {message}",
                kind="transient",
                code=code,
            )


def _to_server(model: Server) -> ProviderServer:
    public_ip = None
    if model.public_net is not None and model.public_net.ipv4 is not None:
        public_ip = model.public_net.ipv4.ip
    created = model.created
    location = getattr(model, "location", None)  # hcloud >= 2.22 (older ones: datacenter)
    return ProviderServer(
        provider_id=str(model.id),
        name=str(model.name),
        status=str(model.status),
        labels=dict(model.labels or {}),
        public_ip=public_ip,
        server_type=model.server_type.data_model.name if model.server_type else None,
        location=location.data_model.name if location else None,
        created_at=created.timestamp() if isinstance(created, datetime) else None,
    )


def _action_error(error: Mapping[str, Any] | None) -> tuple[str, str]:
    if not error:
        return "action_failed", "no error details"
    return str(error.get("code") or "action_failed"), str(error.get("message") or "")
