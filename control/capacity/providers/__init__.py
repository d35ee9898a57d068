"""Where servers come from: the local machine or Hetzner Cloud (PROVIDER)."""

from __future__ import annotations

from control.capacity.providers.base import Provider
from control.settings import Settings, rules


def build_provider(settings: Settings) -> Provider:
    if settings.provider == "hetzner":
        from control.capacity.providers.hetzner import HetznerProvider

        return HetznerProvider(
            token=settings.hetzner_api_token,
            endpoint=settings.hetzner_api_endpoint,
            server_types=settings.hetzner_server_types,
            locations=settings.hetzner_locations,
            image=settings.hetzner_image,
            ssh_keys=settings.hetzner_ssh_keys,
            timeout=settings.hetzner_api_timeout,
        )
    from control.capacity.providers.local import LocalProvider

    loopback = rules.loopback_router(settings)
    return LocalProvider(
        settings.local_workers_dir,
        router_address=settings.local_router_address,
        client_address=rules.LOOPBACK_CLIENT_ADDRESS if loopback else "",
        max_servers=settings.local_max_servers,
        locations=settings.local_locations,
    )
