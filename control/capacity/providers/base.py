"""The provider interface the autoscaler drives.

Contract:
- `create` is idempotent by `name`: when a server with that name already exists
  (a retry after a timeout, a crash between the call and the commit), it is adopted
  and returned, never duplicated.
- `delete` of a server that is already gone succeeds.
- `list` returns every server carrying ALL the given labels.
- Every failure raises `ProviderError` (an `IntegrationError`, control/errors.py)
  carrying the provider's code, message, HTTP status and correlation id; `kind` tells the autoscaler what to do about it (see
  `retry_decision` in control/capacity/decisions.py).
- Volumes (one per user, issue 13): `create_volume` is idempotent by name as `create`
  is; `attach` to the server already holding the volume, `detach` of a detached volume
  and `delete_volume` of a missing one succeed; none waits for the provider's action
  (the agent reports the mount). A server in another location is kind "invalid", code
  `location_mismatch`; the per-server attachment limit is kind "limit"; a volume busy
  with another action (`locked`) is "transient". `resize_volume` only grows: a volume
  already at least that size succeeds unchanged (a retry after a lost reply, or a plan
  that asks for less).
- `volume_price()` is what a GB of volume costs per month, as read at `validate` (None
  when the provider has no price or could not say: a price never fails start-up).
- Implementations never block the event loop: blocking SDKs run in a thread with a
  timeout.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from control.errors import IntegrationError

ErrorKind = Literal[
    "unavailable",  # this (type, location) cannot be had now: try the next pair
    "limit",  # account/project limit reached: stop scaling up, alert the operator
    "rate_limited",  # back off until the reset time
    "transient",  # 5xx, timeout, connection error: back off and retry
    "invalid",  # our request is wrong (bad type, bad token): alert, do not retry blindly
    "not_found",
]


class ProviderError(IntegrationError):
    """A provider call failed. `kind` says what the autoscaler should do about it; `code`
    is the provider's error code ("" when it gave none), `upstream_status` its HTTP status,
    `correlation_id` its request id (control/errors.py)."""

    code = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        kind: ErrorKind,
        code: str = "",
        upstream_status: int | None = None,
        correlation_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(
            message,
            code=code,
            upstream_status=upstream_status,
            correlation_id=correlation_id,
            retry_after=retry_after,
        )
        self.kind: ErrorKind = kind

    def __str__(self) -> str:
        details = [f"code {self.code}"] if self.code else []
        if self.correlation_id:
            details.append(f"correlation id {self.correlation_id}")
        return f"{self.message} ({', '.join(details)})" if details else self.message


@dataclass(frozen=True)
class ServerType:
    name: str
    cpus: int
    memory_mb: int
    disk_gb: int
    hourly_price: float | None = None  # in the provider's currency, net


@dataclass(frozen=True)
class VolumePrice:
    per_gb_month: float  # net of VAT
    currency: str  # ISO 4217, the provider account's currency


@dataclass(frozen=True)
class CreateRequest:
    server_id: str  # ours; also a label
    name: str  # deterministic and unique: the idempotency key
    server_type: str
    location: str
    user_data: str
    labels: dict[str, str]


@dataclass(frozen=True)
class ProviderServer:
    provider_id: str
    name: str
    status: str  # the provider's own status word (e.g. initializing, running, off)
    labels: dict[str, str] = field(default_factory=dict)
    public_ip: str | None = None
    server_type: str | None = None
    location: str | None = None
    created_at: float | None = None  # epoch seconds, when the provider reports it


@dataclass(frozen=True)
class ProviderVolume:
    """A block volume at the provider (control/capacity/providers/base.py)."""

    provider_id: str
    name: str
    location: str
    size_gb: int
    device: str  # where the agent finds it: a stable /dev path, or `loop:<name>` locally
    server_id: str | None = None  # the PROVIDER's id of the server it is attached to
    labels: dict[str, str] = field(default_factory=dict)
    status: str = "available"
    created_at: float | None = None  # epoch seconds, when the provider reports it


class Provider(Protocol):
    name: str
    bills_hourly: bool  # deletion waits for the end of a billed hour when True
    max_servers: int | None  # what the provider can hold at most (None: MAX_SERVERS decides)

    def pairs(self) -> list[tuple[str, str]]:
        """(server type, location) pairs to try, in order of preference."""

    async def validate(self) -> None:
        """Start-up checks (credentials, types, locations); raises ProviderError."""

    def server_type(self, name: str) -> ServerType:
        """Capacity and price of a server type (after `validate`)."""

    def volume_price(self) -> VolumePrice | None:
        """Price of a GB of volume per month (after `validate`; None: unknown)."""

    async def create(self, request: CreateRequest) -> ProviderServer: ...

    async def delete(self, provider_id: str) -> None: ...

    async def list(self, labels: dict[str, str]) -> builtins.list[ProviderServer]: ...

    async def close(self) -> None: ...

    # Volumes (one per user; contract in control/capacity/providers/base.py).
    async def create_volume(
        self, name: str, size_gb: int, location: str, labels: dict[str, str]
    ) -> ProviderVolume: ...

    async def attach(self, volume: ProviderVolume, server_provider_id: str) -> None: ...

    async def detach(self, volume: ProviderVolume) -> None: ...

    async def delete_volume(self, volume: ProviderVolume) -> None: ...

    async def resize_volume(self, volume: ProviderVolume, size_gb: int) -> None: ...

    async def list_volumes(self, labels: dict[str, str]) -> builtins.list[ProviderVolume]: ...


def hourly_price_lookup(provider: Provider) -> Callable[[str | None], float | None]:
    """A server type's hourly price at `provider`, None when unknown (no type, or one
    the provider no longer lists)."""

    def price(server_type: str | None) -> float | None:
        if not server_type:
            return None
        try:
            return provider.server_type(server_type).hourly_price
        except ProviderError:
            return None

    return price
