"""Volumes of the local provider: the volume half of `LocalProvider`.

A local volume is a name: its record is `<LOCAL_WORKERS_DIR>/volumes/<name>.json`
(name, size, location, labels, the local server it is attached to). The agent backs it by a
sparse file it formats and mounts itself (`device` is `loop:<name>`, the protocol's
BlockVolumeSpec), so `attach` and `detach` only record where the volume is, and
`resize_volume` its size (the agent grows the file to the size its spec says); the
provider id is the name. The same contract as Hetzner's
(control/capacity/providers/base.py): create adopts by name, detach of a detached
volume and delete of a missing one succeed, attach while attached elsewhere is refused,
and so is an attach to a server in another location (LOCAL_LOCATIONS) than the volume's.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import time
from pathlib import Path

from control.capacity.providers.base import ProviderError, ProviderVolume

LOCATION = "local"


class LocalVolumes:
    """Mixed into LocalProvider, which supplies `root`."""

    root: Path

    async def create_volume(
        self, name: str, size_gb: int, location: str, labels: dict[str, str]
    ) -> ProviderVolume:
        return await asyncio.to_thread(self._create_volume, name, size_gb, location, labels)

    async def attach(self, volume: ProviderVolume, server_provider_id: str) -> None:
        await asyncio.to_thread(self._move, volume.provider_id, server_provider_id)

    async def detach(self, volume: ProviderVolume) -> None:
        await asyncio.to_thread(self._move, volume.provider_id, None)

    async def delete_volume(self, volume: ProviderVolume) -> None:
        record = self._record(volume.provider_id)
        current = self._read_volume(record)
        if current is not None and current.server_id is not None:
            raise ProviderError(
                f"volume {volume.name} is attached to {current.server_id}: detach it first",
                kind="invalid",
                code="volume_already_attached",
            )
        record.unlink(missing_ok=True)

    async def resize_volume(self, volume: ProviderVolume, size_gb: int) -> None:
        await asyncio.to_thread(self._resize, volume.provider_id, size_gb)

    async def list_volumes(self, labels: dict[str, str]) -> builtins.list[ProviderVolume]:
        return await asyncio.to_thread(self._list_volumes, labels)

    def _record(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ProviderError(f"not a local volume name: {name!r}", kind="invalid")
        return self.root / "volumes" / f"{name}.json"

    def _create_volume(
        self, name: str, size_gb: int, location: str, labels: dict[str, str]
    ) -> ProviderVolume:
        record = self._record(name)
        existing = self._read_volume(record)
        if existing is not None:
            if any(existing.labels.get(k) != v for k, v in labels.items()):
                raise ProviderError(
                    f"a local volume named {name} exists with other labels",
                    kind="invalid",
                    code="uniqueness_error",
                )
            return existing
        record.parent.mkdir(parents=True, exist_ok=True)
        volume = ProviderVolume(
            name,
            name,
            location or LOCATION,
            size_gb,
            f"loop:{name}",
            None,
            dict(labels),
            created_at=time.time(),
        )
        _write(record, volume)
        return volume

    def _move(self, name: str, server: str | None) -> None:
        record = self._record(name)
        volume = self._read_volume(record)
        if volume is None:
            raise ProviderError(f"no local volume {name}", kind="not_found", code="not_found")
        if server is not None and volume.server_id not in (None, server):
            raise ProviderError(
                f"volume {name} is attached to {volume.server_id}",
                kind="invalid",
                code="volume_already_attached",
            )
        if server is not None and self._location_of(server) != volume.location:
            raise ProviderError(  # as Hetzner answers it (steps.on_failure reads the code)
                f"volume {name} is in {volume.location}, server {server} is not",
                kind="invalid",
                code="location_mismatch",
            )
        _write(record, ProviderVolume(**{**volume.__dict__, "server_id": server}))

    def _resize(self, name: str, size_gb: int) -> None:
        record = self._record(name)
        volume = self._read_volume(record)
        if volume is None:
            raise ProviderError(f"no local volume {name}", kind="not_found", code="not_found")
        if volume.size_gb < size_gb:  # only grows, as Hetzner's
            _write(record, ProviderVolume(**{**volume.__dict__, "size_gb": size_gb}))

    def _location_of(self, server: str) -> str:
        try:
            meta = json.loads((self.root / server / "server.json").read_text())
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            return LOCATION
        return str(meta.get("location", LOCATION))

    def _list_volumes(self, labels: dict[str, str]) -> builtins.list[ProviderVolume]:
        folder = self.root / "volumes"
        if not folder.is_dir():
            return []
        found = (self._read_volume(p) for p in sorted(folder.glob("*.json")))
        return [
            v
            for v in found
            if v is not None and all(v.labels.get(k) == val for k, val in labels.items())
        ]

    @staticmethod
    def _read_volume(record: Path) -> ProviderVolume | None:
        try:
            data = json.loads(record.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return ProviderVolume(**data)


def _write(record: Path, volume: ProviderVolume) -> None:
    temporary = record.with_suffix(".tmp")
    temporary.write_text(json.dumps(volume.__dict__, sort_keys=True))
    temporary.replace(record)  # atomic: a crash leaves the old record or the new one
