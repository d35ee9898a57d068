"""The origin TLS part of the worker protocol (docs/protocol.md, "Origin TLS").

Contract:
- `GET /v1/agent/origin-tls` (worker signature): the `OriginTlsPolicy`; empty
  hostnames when origin TLS is off (the local provider, no Cloudflare DNS).
- `POST /v1/agent/origin-tls` (worker signature, body `OriginCertRequest`): the
  `OriginCertReply` for the CSR; 404 when origin TLS is off, 400 for a CSR that asks
  for other names or a weak key, 503 while Cloudflare is unreachable or origin pulls
  are not set up yet. Each handler authenticates first, as agent_routes does, and
  then, once its own checks passed and before it calls Cloudflare, persists the nonce
  in a transaction that refuses a revoked worker (403 `worker_revoked`): a worker's
  secret is cached, so without that a dead or deleted server kept getting
  certificates, and a request replayed after a restart was accepted again.
- `origin_tls_context` builds the service at start-up when `tls_rules.enabled` (Cloudflare
  client of its own, pair file beside the database) and runs its start-up check in the
  background, so an outage never holds start-up; `ORIGIN_TLS` holds it (`.service`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from control.api.bodies import decode_body, msgspec_response, refuse_duplicate_parameters
from control.appkeys import FLEET, ORIGIN_TLS, SETTINGS
from control.dns.cloudflare_api import CloudflareApi
from control.edge import tls_rules
from control.edge.origin_pull import PullStore
from control.edge.tls_origin import OriginTls
from control.errors import ClawfleetError, NotFound
from control.keyring import Keyring
from shared import protocol

log = logging.getLogger(__name__)
origin_tls_routes = web.RouteTableDef()
PAIR_FILE = "origin-pull.json"


@dataclass
class OriginTlsSlot:
    service: OriginTls | None = None


@origin_tls_routes.get("/v1/agent/origin-tls")
async def policy(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    caller = await fleet.auth.worker(request)
    refuse_duplicate_parameters(request)
    await fleet.store.write(caller.accept_live_worker)
    service = request.app[ORIGIN_TLS].service
    if service is None:
        return msgspec_response(protocol.OriginTlsPolicy(hostnames=[]))
    return msgspec_response(service.policy())


@origin_tls_routes.post("/v1/agent/origin-tls")
async def sign(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    caller = await fleet.auth.worker(request)
    refuse_duplicate_parameters(request)
    req = decode_body(caller.body, protocol.OriginCertRequest)
    service = request.app[ORIGIN_TLS].service
    if service is None:
        raise NotFound("origin TLS is off: this control plane signs no certificates")
    csr = service.admit(req.csr)
    await fleet.store.write(caller.accept_live_worker)
    reply = await service.issue(req.csr, csr)
    log.info("origin TLS: signed a certificate for worker %s", caller.key_id)
    return msgspec_response(reply)


async def origin_tls_context(app: web.Application) -> AsyncIterator[None]:
    settings, slot = app[SETTINGS], OriginTlsSlot()
    app[ORIGIN_TLS] = slot
    if not tls_rules.enabled(settings.provider, settings.dns_provider):
        yield
        return
    api = CloudflareApi(
        settings.cloudflare_api_token,
        settings.cloudflare_zone_id,
        api_base=settings.cloudflare_api_base,
    )
    store = PullStore(
        Path(settings.database_path).parent / PAIR_FILE, Keyring(settings.internal_secret)
    )
    slot.service = OriginTls(api, settings.base_domain, store)
    started = asyncio.create_task(_start(slot.service))
    try:
        yield
    finally:
        started.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await started
        await api.close()


async def _start(service: OriginTls) -> None:
    """Retried until it succeeds: workers wait for it (503) rather than serve a TLS
    configuration that Cloudflare's pulls would not pass."""
    delay = 5.0
    while True:
        try:
            await service.start()
            return
        except ClawfleetError as exc:
            log.error("origin TLS start-up: %s; retry in %.0fs", exc.message, delay)
        await asyncio.sleep(delay)
        delay = min(300.0, delay * 2)
