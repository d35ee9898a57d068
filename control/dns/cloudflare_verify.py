"""The Cloudflare DNS provider's `verify()`: can this token do the job in this zone?

Contract: `Verification(api, base_domain).run()` checks, in order: the token
(`GET /user/tokens/verify`, status active), the zone (`GET /zones/{id}`, readable, and
BASE_DOMAIN inside it), DNS read (`GET /zones/{id}/dns_records?per_page=1`) and DNS edit
(`POST /zones/{id}/dns_records/batch` with an empty batch: a real write request that
changes nothing; 401/403 there means no Zone:DNS:Edit), and returns the zone's name.
Messages name CLOUDFLARE_API_TOKEN, CLOUDFLARE_ZONE_ID or BASE_DOMAIN and the missing
permission. An account-owned token is refused by the /user verify endpoint; when the
zone read then succeeds, the token works and the check goes on. Each request is tried
once: an outage (no answer, 408, 429, 5xx, at any step) raises its own `DnsError` for the
caller to retry the whole check (control/dns/sync.py), and only a definite refusal
(`control.dns.provider.is_refusal`) carries a 4xx status or none.
"""

from __future__ import annotations

import logging

from control.dns.cloudflare_api import ZONE_MISSING, CloudflareApi, field
from control.dns.provider import DnsError, is_transient, is_under

log = logging.getLogger(__name__)


class Verification:
    def __init__(self, api: CloudflareApi, base_domain: str) -> None:
        self.api = api
        self.base_domain = base_domain

    async def run(self) -> str:
        token_error = await self._verify_token()
        zone_name = await self._verify_zone(token_error)
        await self._verify_dns_rights()
        log.info("dns: Cloudflare token verified for %s in zone %s", self.base_domain, zone_name)
        return zone_name

    async def _verify_token(self) -> DnsError | None:
        """None when the token is active; the refusal when /user verify refused it
        (invalid, or account-owned: the zone read decides)."""
        try:
            token = await self.api.request(
                "token verify", self.api.client.user.tokens.verify, once=True
            )
        except DnsError as exc:
            if exc.upstream_status not in (400, 401, 403):
                raise
            return exc
        status = field(token, "status")
        if status != "active":
            raise DnsError(
                f"CLOUDFLARE_API_TOKEN is {status or 'not active'} (Cloudflare token "
                "verify); create an active token with Zone:DNS:Edit and Zone:Read"
            )
        return None

    async def _verify_zone(self, token_error: DnsError | None) -> str:
        """The zone's name, once the zone is readable and BASE_DOMAIN is inside it."""
        try:
            zone = await self.api.request(
                "zone read", lambda: self.api.client.zones.get(zone_id=self.api.zone_id), once=True
            )
        except DnsError as exc:
            if is_transient(exc.upstream_status):
                raise  # no answer about the token nor the zone: an outage, not a refusal
            if token_error is not None:
                raise DnsError(
                    f"CLOUDFLARE_API_TOKEN was refused ({token_error.message}; {exc.message}): "
                    "it is not a valid API token, or an account-owned token without "
                    f"Zone:Read on zone {self.api.zone_id}",
                    upstream_code=token_error.upstream_code,
                    upstream_status=token_error.upstream_status,
                ) from None
            if exc.upstream_status in (401, 403):
                raise self.api.no_rights("Zone:Read", exc) from None
            if exc.upstream_status in (400, 404) or exc.upstream_code in ZONE_MISSING:
                raise DnsError(
                    f"CLOUDFLARE_ZONE_ID {self.api.zone_id} is not a zone this token can see "
                    f"({exc.message}); use the zone id from the zone's Overview page",
                    upstream_code=exc.upstream_code,
                    upstream_status=exc.upstream_status,
                ) from None
            raise
        if token_error is not None:
            log.info(
                "dns: the /user token verify refused the token (account-owned?), "
                "but it reads the zone: going on"
            )
        zone_name = str(field(zone, "name") or "").rstrip(".").lower()
        self.api.zone_name = zone_name or None
        if (
            zone_name
            and self.base_domain != zone_name
            and not is_under(self.base_domain, zone_name)
        ):
            raise DnsError(
                f"BASE_DOMAIN {self.base_domain} is not in the zone {zone_name} "
                f"(CLOUDFLARE_ZONE_ID {self.api.zone_id})"
            )
        return zone_name

    async def _verify_dns_rights(self) -> None:
        try:
            await self.api.request(
                "DNS read",
                lambda: self.api.client.dns.records.list(zone_id=self.api.zone_id, per_page=1),
                once=True,
            )
        except DnsError as exc:
            raise self.api.rights_check(exc, "Zone:DNS:Edit (even DNS read is denied)") from None
        try:
            # An empty batch is a write request that changes nothing: Cloudflare checks
            # the DNS edit permission on it like on any write.
            await self.api.request(
                "DNS edit check",
                lambda: self.api.client.dns.records.batch(zone_id=self.api.zone_id),
                once=True,
            )
        except DnsError as exc:
            if exc.upstream_status in (401, 403):
                raise self.api.no_rights("Zone:DNS:Edit", exc) from None
            if is_transient(exc.upstream_status):
                raise
            # Not a rights problem (e.g. the API rejects an empty batch): writes will
            # report missing rights with the same message if there is a problem.
            log.warning("dns: could not confirm DNS edit rights: %s", exc.message)
