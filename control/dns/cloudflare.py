"""Cloudflare DNS provider: one proxied A record per user, through the official SDK.

Contract (on top of `control.dns.provider.DnsProvider`):
- Records: `<subdomain>.<BASE_DOMAIN>` A -> the worker's public IPv4, `proxied: true`,
  `ttl: 1` (automatic), `comment: "managed-by=clawfleet cluster=<CLUSTER_NAME>"`. The
  comment is the marker that makes a record "ours" (comments exist on every plan; tags
  do not). A record is ours only when it is an A record, strictly under BASE_DOMAIN
  (never the apex) and carries exactly our comment: anything else is never changed nor
  deleted. A record someone else made at a user's name (an A/AAAA/CNAME without our
  marker) is a conflict: `upsert` raises instead of adding a second answer next to it.
- `upsert(name, ip)` lists the records at exactly `name`, then patches ours (keeping one
  and deleting the extras) or creates one. The create is never repeated blindly: the
  SDK's automatic retries are off (`max_retries=0`), and after a create that failed
  ambiguously (timeout, connection error, 5xx) or answered "already exists" (81057,
  81058) the name is listed again first, so a POST that was stored before its answer
  was lost never becomes a duplicate. At most UPSERT_ROUNDS list/write rounds.
- `delete(name)` deletes every record of ours at `name`; 81044 (record does not exist)
  and a name with nothing of ours are success. Names outside BASE_DOMAIN, and the apex,
  are refused.
- `list_ours()` pages through the A records under BASE_DOMAIN (at most MAX_PAGES pages)
  and keeps ours.
- `verify()` (start-up, and again in the background until it succeeds) is
  control/dns/cloudflare_verify.py's check of the token, the zone and the DNS rights.
- Requests, the rate limit, retries and errors are control/dns/cloudflare_api.py's
  `CloudflareApi`, built by the caller and passed in (it owns the token and zone id):
  every failure is a `DnsError` with the Cloudflare code, HTTP status and Retry-After,
  and every operation gives up after MAX_ATTEMPTS tries per request or `deadline`
  seconds, whichever first. The API token is never logged nor put into a message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Any

from control.dns.cloudflare_api import (
    ALREADY_EXISTS,
    RECORD_MISSING,
    CloudflareApi,
    RateLimiter,
    field,
    parse_retry_after,
)
from control.dns.cloudflare_verify import Verification
from control.dns.provider import DnsError, DnsRecord, check_ip, is_under

__all__ = ["CloudflareDns", "RateLimiter", "parse_retry_after"]

log = logging.getLogger(__name__)

TTL_AUTO = 1
UPSERT_ROUNDS = 4  # list + write rounds in one upsert; the periodic reconcile does the rest
PAGE_SIZE = 1000  # records per list page (the API allows far more; 1000 keeps replies small)
MAX_PAGES = 100  # 100k records: far beyond any fleet; bounds a misbehaving pagination
NAME_PAGES = 3  # pages when listing one name (a name has a handful of records at most)


class CloudflareDns:
    name = "cloudflare"

    def __init__(self, api: CloudflareApi, base_domain: str, cluster: str) -> None:
        if not cluster or " " in cluster:
            raise DnsError(f"cluster name {cluster!r} must be non-empty without spaces")
        self.zone_id = api.zone_id
        self.base_domain = base_domain.strip().rstrip(".").lower()
        self.cluster = cluster
        self.marker = f"managed-by=clawfleet cluster={cluster}"
        if len(self.marker) > 100:  # the comment limit of the Free plan
            raise DnsError(f"cluster name {cluster!r} is too long for a DNS record comment")
        self.api = api

    def __repr__(self) -> str:
        return f"CloudflareDns(zone_id={self.zone_id!r}, base_domain={self.base_domain!r})"

    async def close(self) -> None:
        await self.api.close()

    async def verify(self) -> None:
        await Verification(self.api, self.base_domain).run()

    # -- records ----------------------------------------------------------------------

    def _is_ours(self, obj: Any) -> bool:
        name = str(field(obj, "name") or "").lower()
        return (
            field(obj, "type") == "A"
            and field(obj, "comment") == self.marker
            and is_under(name, self.base_domain)
        )

    def _record(self, obj: Any) -> DnsRecord:
        return DnsRecord(
            name=str(field(obj, "name") or "").rstrip(".").lower(),
            content=str(field(obj, "content") or ""),
            record_id=field(obj, "id"),
            proxied=bool(field(obj, "proxied", False)),
            ours=self._is_ours(obj),
        )

    def _check_name(self, name: str) -> str:
        name = name.strip().rstrip(".").lower()
        if not is_under(name, self.base_domain):
            raise DnsError(f"refusing DNS name {name!r}: not strictly under {self.base_domain}")
        return name

    async def _list(
        self, what: str, pages: int, per_page: int | None = None, **filters: Any
    ) -> list[Any]:
        """Every record matching `filters`, following pagination for at most `pages`."""
        size = per_page or PAGE_SIZE
        found: list[Any] = []
        for page in range(1, pages + 1):

            def fetch(page: int = page) -> Awaitable[Any]:
                return self.api.client.dns.records.list(
                    zone_id=self.api.zone_id, page=page, per_page=size, **filters
                )

            result = await self.api.request(what, fetch)
            items = list(result.result or [])
            found.extend(items)
            info = result.result_info
            total_pages = (info.model_extra or {}).get("total_pages") if info else None
            if len(items) < size or (isinstance(total_pages, int) and page >= total_pages):
                return found
        log.warning("dns: %s: stopped after %d pages", what, pages)
        return found

    async def _at(self, name: str) -> list[Any]:
        """Every record (any type) named exactly `name`."""
        try:
            items = await self._list(f"list {name}", NAME_PAGES, name={"exact": name}, per_page=100)
        except DnsError as exc:
            raise self.api.rights_check(exc) from None
        # The API's name filter is case-insensitive; compare exactly anyway.
        return [r for r in items if str(field(r, "name") or "").rstrip(".").lower() == name]

    async def _delete_id(self, name: str, record_id: str) -> None:
        try:
            await self.api.request(
                f"delete {name}",
                lambda: self.api.client.dns.records.delete(record_id, zone_id=self.api.zone_id),
            )
        except DnsError as exc:
            if exc.upstream_code == RECORD_MISSING or exc.upstream_status == 404:
                return  # already gone: what we wanted
            raise self.api.rights_check(exc) from None

    async def list_ours(self) -> list[DnsRecord]:
        try:
            items = await self._list(
                "list records",
                MAX_PAGES,
                type="A",
                name={"endswith": "." + self.base_domain},
            )
        except DnsError as exc:
            raise self.api.rights_check(exc) from None
        return [self._record(r) for r in items if self._is_ours(r)]

    async def upsert(self, name: str, ip: str) -> DnsRecord:
        name = self._check_name(name)
        try:
            ip = check_ip(ip)
        except ValueError:
            raise DnsError(f"refusing DNS record {name} -> {ip!r}: not an IPv4 address") from None
        started = time.monotonic()
        last: DnsError | None = None
        for attempt in range(1, UPSERT_ROUNDS + 1):
            existing = await self._at(name)
            foreign = [
                r
                for r in existing
                if not self._is_ours(r) and field(r, "type") in ("A", "AAAA", "CNAME")
            ]
            if foreign:
                kinds = ", ".join(sorted({str(field(r, "type")) for r in foreign}))
                raise DnsError(
                    f"{name} already has a {kinds} record without our marker "
                    f"({self.marker!r}); not touching it: delete it by hand or pick "
                    "another subdomain",
                    upstream_status=409,
                )
            mine = [r for r in existing if self._is_ours(r)]
            try:
                if mine:
                    return await self._settle(name, ip, mine)
                return await self._create(name, ip)
            except DnsError as exc:
                if exc.upstream_status in (401, 403):
                    raise self.api.rights_check(exc) from None
                ambiguous = exc.upstream_status == 0 or (exc.upstream_status or 0) >= 500
                if (
                    exc.upstream_code not in ALREADY_EXISTS
                    and exc.upstream_code != RECORD_MISSING
                    and not ambiguous
                ):
                    raise
                last = exc
                # Already exists / vanished / maybe stored: look again before writing.
                delay = self.api.delay(exc, attempt) or 0.0
                if self.api.out_of_time(started, delay):
                    break
                log.info("dns: upsert %s: %s; listing again", name, exc.message)
                if delay:
                    await self.api.sleep(delay)
        raise DnsError(
            f"upsert {name} -> {ip} did not settle after {UPSERT_ROUNDS} rounds"
            + (f": {last.message}" if last else ""),
            upstream_code=last.upstream_code if last else None,
            upstream_status=last.upstream_status if last else None,
        )

    async def _settle(self, name: str, ip: str, mine: list[Any]) -> DnsRecord:
        """Keep one record of ours (the best match), delete the others, patch the keeper."""
        mine.sort(
            key=lambda r: (
                field(r, "content") != ip,
                not field(r, "proxied", False),
                field(r, "ttl") != TTL_AUTO,
                str(field(r, "created_on") or ""),
                str(field(r, "id")),
            )
        )
        keep, extras = mine[0], mine[1:]
        for extra in extras:
            log.warning("dns: %s: deleting duplicate record %s", name, field(extra, "id"))
            await self._delete_id(name, str(field(extra, "id")))
        if (
            field(keep, "content") == ip
            and field(keep, "proxied", False) is True
            and field(keep, "ttl") == TTL_AUTO
        ):
            return self._record(keep)
        record_id = str(field(keep, "id"))
        updated = await self.api.request(
            f"update {name}",
            lambda: self.api.client.dns.records.edit(record_id, **self._a_record(name, ip)),
        )
        log.info("dns: %s -> %s (updated %s)", name, ip, record_id)
        return self._record(updated) if updated is not None else DnsRecord(name, ip, record_id)

    def _a_record(self, name: str, ip: str) -> dict[str, Any]:
        """What a created or updated record holds: proxied, automatic TTL, our marker."""
        return {
            "zone_id": self.api.zone_id,
            "name": name,
            "type": "A",
            "content": ip,
            "ttl": TTL_AUTO,
            "proxied": True,
            "comment": self.marker,
        }

    async def _create(self, name: str, ip: str) -> DnsRecord:
        created = await self.api.request(
            f"create {name}",
            lambda: self.api.client.dns.records.create(**self._a_record(name, ip)),
            repeatable=False,
        )
        if created is None:  # success without a body: look it up on the next round
            raise DnsError(f"create {name}: empty answer", upstream_status=0)
        log.info("dns: %s -> %s (created %s)", name, ip, field(created, "id"))
        return self._record(created)

    async def delete(self, name: str) -> None:
        name = self._check_name(name)
        existing = await self._at(name)
        others = [r for r in existing if not self._is_ours(r)]
        if others:
            log.info("dns: %s: leaving %d record(s) without our marker", name, len(others))
        for record in existing:
            if self._is_ours(record):
                await self._delete_id(name, str(field(record, "id")))
                log.info("dns: %s deleted (%s)", name, field(record, "id"))
