"""Hetzner Cloud Volumes through hcloud: the volume half of `HetznerProvider`.

Contract (control/capacity/providers/base.py states what every provider promises):
- `create_volume` is idempotent by name: it looks the name up first and adopts a volume
  carrying every requested label (one without them is someone else's: kind "invalid",
  code "uniqueness_error"); after a timeout or a transient error it looks again before
  reporting. It creates in a location, unattached and unformatted (the agent formats a
  blank device, never a used one).
- `attach` to the server that already holds the volume succeeds (a retry after a lost
  reply); `detach` of a volume attached nowhere succeeds; `delete_volume` of a volume
  that is gone succeeds. None of them waits for its action: the agent's heartbeat says
  when the device is mounted, and a later call meeting the running action gets `locked`.
- `resize_volume` grows a volume, attached or not (the agent grows its file system). The
  API refuses a size that does not grow it (`invalid_input`): the volume is then read,
  and one already at least that size is success (a retry after a lost reply).
- Errors are ProviderErrors (control/capacity/providers/hetzner_errors.py): `locked`
  and `conflict` are "transient" (retry after a back-off), `resource_limit_exceeded`
  (16 volumes on the server) is "limit", a volume or server that is gone is "not_found",
  and a server in another location than the volume is "invalid" with code
  `location_mismatch` (the API says `invalid_input`; the message tells them apart).
- `volume_price()` is `GET /pricing`'s volume price per GB-month (net, in the account's
  currency), read by `validate` through hcloud's generic `Client.request` (hcloud has no
  pricing client). A failed call or a reply without that price leaves it None, logged: a
  price informs the operator and must never stop start-up.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from hcloud import Client
from hcloud.locations import Location
from hcloud.servers import Server
from hcloud.volumes import Volume

from control.capacity.providers.base import ProviderError, ProviderVolume, VolumePrice
from control.capacity.providers.hetzner_catalog import check_labels

log = logging.getLogger(__name__)
T = TypeVar("T")
_MAX_PAGES = 200
_NAME_MAX = 64  # Hetzner's rule for a resource name


def volume_name(cluster: str, user_id: str) -> str:
    """`cf-<cluster>-<user id>`, cut to Hetzner's 64 characters (user ids are unique and
    short in practice; the cut keeps the name valid if one is not)."""
    return f"cf-{cluster}-{user_id}"[:_NAME_MAX].rstrip("-._")


def location_mismatch(exc: ProviderError) -> bool:
    """The API's answer to attaching a volume to a server in another location."""
    return exc.code == "invalid_input" and "same location" in exc.message


def volume_price_of(payload: Mapping[str, Any]) -> VolumePrice | None:
    """The volume price in a `GET /pricing` reply; None when it is missing or not a price."""
    try:
        pricing = payload["pricing"]
        net = Decimal(str(pricing["volume"]["price_per_gb_month"]["net"]))
        currency = pricing["currency"]
    except (KeyError, TypeError, InvalidOperation):
        return None
    if not net.is_finite() or net < 0 or not isinstance(currency, str) or not currency:
        return None
    return VolumePrice(per_gb_month=float(net), currency=currency)


def to_volume(model: Any) -> ProviderVolume:
    server = getattr(model, "server", None)
    location = getattr(model, "location", None)
    created = getattr(model, "created", None)
    return ProviderVolume(
        provider_id=str(model.id),
        name=str(model.name),
        location=str(getattr(location, "name", "") or ""),
        size_gb=int(model.size),
        device=str(model.linux_device or ""),
        server_id=str(server.id) if server is not None else None,
        labels=dict(model.labels or {}),
        status=str(model.status or ""),
        created_at=created.timestamp() if isinstance(created, datetime) else None,
    )


class HetznerVolumes:
    """Mixed into HetznerProvider, which supplies `_client` and `_call`."""

    _client: Client
    page_size: int
    _volume_price: VolumePrice | None = None

    async def _call(self, fn: Callable[..., T], *args: Any, what: str) -> T:
        raise NotImplementedError  # HetznerProvider._call

    def volume_price(self) -> VolumePrice | None:
        return self._volume_price

    async def _read_volume_price(self) -> None:
        """Called by `validate`; see the module docstring for why a failure is only logged."""
        try:
            payload = await self._call(self._pricing, what="read prices")
        except ProviderError as exc:
            self._volume_price = None
            log.warning("hetzner: volume price unknown: %s", exc)
            return
        self._volume_price = volume_price_of(payload)
        if self._volume_price is None:
            log.warning("hetzner: volume price unknown: no volume price in GET /pricing")

    async def create_volume(
        self, name: str, size_gb: int, location: str, labels: dict[str, str]
    ) -> ProviderVolume:
        check_labels(labels)
        existing = await self._call(self._volume_named, name, what=f"look up volume {name}")
        if existing is not None:
            return _adopt(existing, labels)
        try:
            return await self._call(
                self._create, name, size_gb, location, labels, what=f"create volume {name}"
            )
        except ProviderError as exc:
            if exc.code != "uniqueness_error" and exc.kind != "transient":
                raise
            try:  # a lost reply may have created it; a taken name may be ours
                existing = await self._call(self._volume_named, name, what=f"look up {name}")
            except ProviderError:
                raise exc from None
            if existing is None:
                raise
            return _adopt(existing, labels)

    async def attach(self, volume: ProviderVolume, server_provider_id: str) -> None:
        what = f"attach volume {volume.name} to server {server_provider_id}"
        try:
            await self._call(
                self._attach, int(volume.provider_id), int(server_provider_id), what=what
            )
        except ProviderError as exc:
            if location_mismatch(exc):
                raise ProviderError(
                    f"{exc.message} (volume {volume.name} is in {volume.location})",
                    kind="invalid",
                    code="location_mismatch",
                    upstream_status=exc.upstream_status,
                    correlation_id=exc.correlation_id,
                ) from None
            if exc.code != "volume_already_attached":
                raise
            now = await self._call(self._get, int(volume.provider_id), what=f"read {volume.name}")
            if now.server_id != server_provider_id:
                raise

    async def detach(self, volume: ProviderVolume) -> None:
        try:
            await self._call(self._detach, int(volume.provider_id), what=f"detach {volume.name}")
        except ProviderError as exc:
            current = None
            if exc.code == "invalid_input":  # "not attached": read to be sure
                current = await self._call(
                    self._get, int(volume.provider_id), what=f"read {volume.name}"
                )
            if current is None or current.server_id is not None:
                raise

    async def delete_volume(self, volume: ProviderVolume) -> None:
        try:
            await self._call(
                self._delete, int(volume.provider_id), what=f"delete volume {volume.name}"
            )
        except ProviderError as exc:
            if exc.kind != "not_found":
                raise

    async def resize_volume(self, volume: ProviderVolume, size_gb: int) -> None:
        what = f"resize volume {volume.name} to {size_gb} GB"
        try:
            await self._call(self._resize, int(volume.provider_id), size_gb, what=what)
        except ProviderError as exc:
            if exc.code != "invalid_input":
                raise
            now = await self._call(self._get, int(volume.provider_id), what=f"read {volume.name}")
            if now.size_gb < size_gb:
                raise

    async def list_volumes(self, labels: dict[str, str]) -> builtins.list[ProviderVolume]:
        check_labels(labels)
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or None
        found: dict[str, ProviderVolume] = {}
        page: int | None = 1
        for _ in range(_MAX_PAGES):
            volumes, page = await self._call(self._page, selector, page, what="list volumes")
            for volume in volumes:
                found.setdefault(volume.provider_id, volume)
            if page is None:
                return builtins.list(found.values())
        raise ProviderError(
            f"listing volumes did not end after {_MAX_PAGES} pages", kind="transient"
        )

    # -- blocking code, run on the pool by `_call` ---------------------------------------

    def _pricing(self) -> dict[str, Any]:
        return self._client.request("GET", "/pricing")

    def _volume_named(self, name: str) -> ProviderVolume | None:
        volumes, _ = self._client.volumes.get_list(name=name)
        matches = [v for v in volumes if v.data_model.name == name]
        return to_volume(matches[0].data_model) if matches else None

    def _create(
        self, name: str, size_gb: int, location: str, labels: dict[str, str]
    ) -> ProviderVolume:
        response = self._client.volumes.create(
            size=size_gb,
            name=name,
            labels=dict(labels),  # type: ignore[arg-type]  # hcloud's hint says str; it sends a dict
            location=Location(name=location),
        )
        return to_volume(response.volume.data_model)

    def _get(self, volume_id: int) -> ProviderVolume:
        return to_volume(self._client.volumes.get_by_id(volume_id).data_model)

    def _attach(self, volume_id: int, server_id: int) -> None:
        self._client.volumes.attach(Volume(id=volume_id), Server(id=server_id))

    def _detach(self, volume_id: int) -> None:
        self._client.volumes.detach(Volume(id=volume_id))

    def _delete(self, volume_id: int) -> None:
        self._client.volumes.delete(Volume(id=volume_id))

    def _resize(self, volume_id: int, size_gb: int) -> None:
        self._client.volumes.resize(Volume(id=volume_id), size_gb)

    def _page(
        self, selector: str | None, page: int
    ) -> tuple[builtins.list[ProviderVolume], int | None]:
        volumes, meta = self._client.volumes.get_list(
            label_selector=selector, page=page, per_page=self.page_size
        )
        pagination = meta.pagination if meta is not None else None
        next_page = pagination.next_page if pagination is not None else None
        return [to_volume(v.data_model) for v in volumes], (next_page or None)


def _adopt(volume: ProviderVolume, labels: dict[str, str]) -> ProviderVolume:
    foreign = sorted(k for k, v in labels.items() if volume.labels.get(k) != v)
    if foreign:
        raise ProviderError(
            f"a volume named {volume.name} exists (id {volume.provider_id}) but its labels "
            f"differ for {', '.join(foreign)}: not adopting it",
            kind="invalid",
            code="uniqueness_error",
        )
    return volume
