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
- `verify()` (start-up, and again in the background until it succeeds) checks, in order:
  the token (`GET /user/tokens/verify`, status
  active), the zone (`GET /zones/{id}`, readable, and BASE_DOMAIN inside it), DNS read
  (`GET /zones/{id}/dns_records?per_page=1`) and DNS edit (`POST
  /zones/{id}/dns_records/batch` with an empty batch: a real write request that changes
  nothing; 401/403 there means no Zone:DNS:Edit). Messages name CLOUDFLARE_API_TOKEN,
  CLOUDFLARE_ZONE_ID or BASE_DOMAIN and the missing permission. An account-owned token
  is refused by the /user verify endpoint; when the zone read then succeeds, the token
  works and verify goes on. Each request is tried once: an outage (no answer, 408, 429,
  5xx, at any step) raises its own `DnsError` for the caller to retry the whole check
  (control/dns/sync.py), and only a definite refusal (`control.dns.provider.is_refusal`) carries
  a 4xx status or none.
- Rate limit: Cloudflare allows 1200 requests per 5 minutes per user, shared by every
  client of that user. A client-side limiter keeps us at BUDGET requests per WINDOW
  (below that, to leave room for people and other tools), a 429 waits `Retry-After`
  (else exponential back-off with jitter) through `control.dns.provider.retry_delay`, and every operation
  gives up after MAX_ATTEMPTS tries per request or `deadline` seconds, whichever first.
- Errors are `DnsError` with the Cloudflare code, HTTP status and Retry-After. The API
  token is never logged nor put into a message (the SDK's errors and debug logs carry
  the response body and URL, never the request headers).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import cloudflare
from cloudflare import AsyncCloudflare

from control.dns.provider import (
    DnsError,
    DnsRecord,
    check_ip,
    is_transient,
    is_under,
    retry_delay,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_API_BASE = "https://api.cloudflare.com/client/v4"
ALREADY_EXISTS = frozenset({81057, 81058})  # "same settings" / "identical record" exists
RECORD_MISSING = 81044  # "Record does not exist."
ZONE_MISSING = frozenset({7003, 1001, 7000})  # could not route / invalid zone identifier
TTL_AUTO = 1
UPSERT_ROUNDS = 4  # list + write rounds in one upsert; the periodic reconcile does the rest
PAGE_SIZE = 1000  # records per list page (the API allows far more; 1000 keeps replies small)
MAX_PAGES = 100  # 100k records: far beyond any fleet; bounds a misbehaving pagination
NAME_PAGES = 3  # pages when listing one name (a name has a handful of records at most)
BUDGET = 1000  # requests per WINDOW we allow ourselves (Cloudflare: 1200 per 5 minutes)
WINDOW = 300.0
BURST = 50

Sleep = Callable[[float], Awaitable[None]]


class RateLimiter:
    """A token bucket of `burst` requests refilled at `budget / window` per second.

    Reservation style: `acquire` takes a token even when the bucket is empty and sleeps
    for the debt, so it never loops (and a test clock that does not move cannot hang it).
    Over any window the requests stay at most burst + budget (here 1050 < 1200)."""

    def __init__(
        self,
        budget: int = BUDGET,
        window: float = WINDOW,
        burst: int = BURST,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = budget / window
        self._burst = float(burst)
        self._tokens = float(burst)
        self._sleep = sleep
        self._clock = clock
        self._last = clock()

    async def acquire(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        self._tokens -= 1.0
        if self._tokens < 0:
            await self._sleep(-self._tokens / self._rate)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a `Retry-After` header: delta-seconds or an HTTP date; None if absent
    or unreadable."""
    if value is None or not value.strip():
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else datetime.now(UTC).timestamp()
    return max(0.0, when.timestamp() - current)


def _error_from(what: str, exc: cloudflare.APIError) -> DnsError:
    """A DnsError from an SDK exception: code, message, status, Retry-After. Only fields
    of the response body go into the message, never the request (its headers hold the
    token)."""
    if isinstance(exc, cloudflare.APITimeoutError):
        return DnsError(f"Cloudflare {what}: timed out", status=0)
    if isinstance(exc, cloudflare.APIConnectionError):
        return DnsError(f"Cloudflare {what}: no answer (connection error)", status=0)
    status = getattr(exc, "status_code", None)
    code: int | None = None
    message = "unexpected answer"
    if exc.errors:
        code = exc.errors[0].code
        message = exc.errors[0].message or message
    retry_after = None
    response = getattr(exc, "response", None)
    if response is not None:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
    label = f"HTTP {status}" if status is not None else "error"
    if code is not None:
        label += f", code {code}"
    return DnsError(
        f"Cloudflare {what}: {label}: {message}",
        code=code,
        status=status,
        retry_after=retry_after,
    )


def _field(obj: Any, name: str, default: Any = None) -> Any:
    """A field of an SDK record model (a union over every record type)."""
    return getattr(obj, name, default)


class CloudflareDns:
    name = "cloudflare"

    def __init__(
        self,
        token: str,
        zone_id: str,
        base_domain: str,
        cluster: str,
        api_base: str | None = None,
        timeout: float = 10.0,
        *,
        deadline: float = 120.0,
        sleep: Sleep = asyncio.sleep,
        limiter: RateLimiter | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not token:
            raise DnsError("CLOUDFLARE_API_TOKEN is empty; DNS_PROVIDER=cloudflare needs it")
        if not zone_id:
            raise DnsError("CLOUDFLARE_ZONE_ID is empty; DNS_PROVIDER=cloudflare needs it")
        if not cluster or " " in cluster:
            raise DnsError(f"cluster name {cluster!r} must be non-empty without spaces")
        self.zone_id = zone_id
        self.base_domain = base_domain.strip().rstrip(".").lower()
        self.cluster = cluster
        self.marker = f"managed-by=clawfleet cluster={cluster}"
        if len(self.marker) > 100:  # the comment limit of the Free plan
            raise DnsError(f"cluster name {cluster!r} is too long for a DNS record comment")
        self._deadline = deadline
        self._sleep = sleep
        self._rand = rand  # the jitter of retry waits (tests fix it)
        self._limiter = limiter or RateLimiter(sleep=sleep)
        self._zone_name: str | None = None
        # max_retries=0: the SDK would otherwise retry POSTs on timeouts (a duplicate
        # record) and sleep on 429s on its own; retries and waits are ours (see _request).
        self._client = AsyncCloudflare(
            api_token=token,
            base_url=api_base or DEFAULT_API_BASE,
            max_retries=0,
            timeout=timeout,
        )
        # The SDK also reads CLOUDFLARE_API_KEY / CLOUDFLARE_EMAIL /
        # CLOUDFLARE_API_USER_SERVICE_KEY from the environment and prefers a global key
        # over the token: only the token we were given may authenticate.
        self._client.api_key = None
        self._client.api_email = None
        self._client.user_service_key = None

    def __repr__(self) -> str:
        return f"CloudflareDns(zone_id={self.zone_id!r}, base_domain={self.base_domain!r})"

    async def close(self) -> None:
        await self._client.close()

    # -- requests ---------------------------------------------------------------------

    async def _request(
        self,
        what: str,
        call: Callable[[], Awaitable[T]],
        *,
        repeatable: bool = True,
        once: bool = False,
    ) -> T:
        """One API call under the limiter, retried per `retry_delay` within the deadline.

        A non-repeatable call (a create) is retried only after 429, which Cloudflare
        answers before doing anything; any other failure goes back to the caller, which
        looks before it writes again. `once`: never retried (the caller retries)."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            await self._limiter.acquire()
            try:
                return await call()
            except cloudflare.APIError as exc:
                error = _error_from(what, exc)
            if once or (not repeatable and error.status != 429):
                raise error
            delay = retry_delay(error.status or 0, attempt, error.retry_after, self._rand())
            if delay is None or time.monotonic() - started + delay > self._deadline:
                raise error
            log.warning("dns: %s; retry %d in %.1fs", error.message, attempt, delay)
            await self._sleep(delay)

    def _no_rights(self, permission: str, error: DnsError) -> DnsError:
        zone = (
            f"{self._zone_name} (zone id {self.zone_id})"
            if self._zone_name
            else (f"zone {self.zone_id}")
        )
        return DnsError(
            f"CLOUDFLARE_API_TOKEN lacks {permission} on {zone}: {error.message}. "
            "Give the token Zone:DNS:Edit and Zone:Read on this zone only.",
            code=error.code,
            status=error.status,
        )

    def _rights_check(self, error: DnsError, permission: str = "Zone:DNS:Edit") -> DnsError:
        """401/403 on a DNS call means the token's rights are wrong: say which (once)."""
        if error.status in (401, 403) and "CLOUDFLARE_API_TOKEN" not in error.message:
            return self._no_rights(permission, error)
        return error

    # -- verify -----------------------------------------------------------------------

    async def verify(self) -> None:
        token_error = await self._verify_token()
        zone_name = await self._verify_zone(token_error)
        await self._verify_dns_rights()
        log.info("dns: Cloudflare token verified for %s in zone %s", self.base_domain, zone_name)

    async def _verify_token(self) -> DnsError | None:
        """None when the token is active; the refusal when /user verify refused it
        (invalid, or account-owned: the zone read decides)."""
        try:
            token = await self._request("token verify", self._client.user.tokens.verify, once=True)
        except DnsError as exc:
            if exc.status not in (400, 401, 403):
                raise
            return exc
        status = _field(token, "status")
        if status != "active":
            raise DnsError(
                f"CLOUDFLARE_API_TOKEN is {status or 'not active'} (Cloudflare token "
                "verify); create an active token with Zone:DNS:Edit and Zone:Read"
            )
        return None

    async def _verify_zone(self, token_error: DnsError | None) -> str:
        """The zone's name, once the zone is readable and BASE_DOMAIN is inside it."""
        try:
            zone = await self._request(
                "zone read", lambda: self._client.zones.get(zone_id=self.zone_id), once=True
            )
        except DnsError as exc:
            if is_transient(exc.status):
                raise  # no answer about the token nor the zone: an outage, not a refusal
            if token_error is not None:
                raise DnsError(
                    f"CLOUDFLARE_API_TOKEN was refused ({token_error.message}; {exc.message}): "
                    "it is not a valid API token, or an account-owned token without "
                    f"Zone:Read on zone {self.zone_id}",
                    code=token_error.code,
                    status=token_error.status,
                ) from None
            if exc.status in (401, 403):
                raise self._no_rights("Zone:Read", exc) from None
            if exc.status in (400, 404) or exc.code in ZONE_MISSING:
                raise DnsError(
                    f"CLOUDFLARE_ZONE_ID {self.zone_id} is not a zone this token can see "
                    f"({exc.message}); use the zone id from the zone's Overview page",
                    code=exc.code,
                    status=exc.status,
                ) from None
            raise
        if token_error is not None:
            log.info(
                "dns: the /user token verify refused the token (account-owned?), "
                "but it reads the zone: going on"
            )
        zone_name = str(_field(zone, "name") or "").rstrip(".").lower()
        self._zone_name = zone_name or None
        if (
            zone_name
            and self.base_domain != zone_name
            and not is_under(self.base_domain, zone_name)
        ):
            raise DnsError(
                f"BASE_DOMAIN {self.base_domain} is not in the zone {zone_name} "
                f"(CLOUDFLARE_ZONE_ID {self.zone_id})"
            )
        return zone_name

    async def _verify_dns_rights(self) -> None:
        try:
            await self._request(
                "DNS read",
                lambda: self._client.dns.records.list(zone_id=self.zone_id, per_page=1),
                once=True,
            )
        except DnsError as exc:
            raise self._rights_check(exc, "Zone:DNS:Edit (even DNS read is denied)") from None
        try:
            # An empty batch is a write request that changes nothing: Cloudflare checks
            # the DNS edit permission on it like on any write.
            await self._request(
                "DNS edit check",
                lambda: self._client.dns.records.batch(zone_id=self.zone_id),
                once=True,
            )
        except DnsError as exc:
            if exc.status in (401, 403):
                raise self._no_rights("Zone:DNS:Edit", exc) from None
            if is_transient(exc.status):
                raise
            # Not a rights problem (e.g. the API rejects an empty batch): writes will
            # report missing rights with the same message if there is a problem.
            log.warning("dns: could not confirm DNS edit rights: %s", exc.message)

    # -- records ----------------------------------------------------------------------

    def _is_ours(self, obj: Any) -> bool:
        name = str(_field(obj, "name") or "").lower()
        return (
            _field(obj, "type") == "A"
            and _field(obj, "comment") == self.marker
            and is_under(name, self.base_domain)
        )

    def _record(self, obj: Any) -> DnsRecord:
        return DnsRecord(
            name=str(_field(obj, "name") or "").rstrip(".").lower(),
            content=str(_field(obj, "content") or ""),
            record_id=_field(obj, "id"),
            proxied=bool(_field(obj, "proxied", False)),
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
                return self._client.dns.records.list(
                    zone_id=self.zone_id, page=page, per_page=size, **filters
                )

            result = await self._request(what, fetch)
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
            raise self._rights_check(exc) from None
        # The API's name filter is case-insensitive; compare exactly anyway.
        return [r for r in items if str(_field(r, "name") or "").rstrip(".").lower() == name]

    async def _delete_id(self, name: str, record_id: str) -> None:
        try:
            await self._request(
                f"delete {name}",
                lambda: self._client.dns.records.delete(record_id, zone_id=self.zone_id),
            )
        except DnsError as exc:
            if exc.code == RECORD_MISSING or exc.status == 404:
                return  # already gone: what we wanted
            raise self._rights_check(exc) from None

    async def list_ours(self) -> list[DnsRecord]:
        try:
            items = await self._list(
                "list records",
                MAX_PAGES,
                type="A",
                name={"endswith": "." + self.base_domain},
            )
        except DnsError as exc:
            raise self._rights_check(exc) from None
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
                if not self._is_ours(r) and _field(r, "type") in ("A", "AAAA", "CNAME")
            ]
            if foreign:
                kinds = ", ".join(sorted({str(_field(r, "type")) for r in foreign}))
                raise DnsError(
                    f"{name} already has a {kinds} record without our marker "
                    f"({self.marker!r}); not touching it: delete it by hand or pick "
                    "another subdomain",
                    code=None,
                    status=409,
                )
            mine = [r for r in existing if self._is_ours(r)]
            try:
                if mine:
                    return await self._settle(name, ip, mine)
                return await self._create(name, ip)
            except DnsError as exc:
                if exc.status in (401, 403):
                    raise self._rights_check(exc) from None
                ambiguous = exc.status == 0 or (exc.status or 0) >= 500
                if exc.code not in ALREADY_EXISTS and exc.code != RECORD_MISSING and not ambiguous:
                    raise
                last = exc
                # Already exists / vanished / maybe stored: look again before writing.
                delay = retry_delay(exc.status or 0, attempt, exc.retry_after, self._rand()) or 0.0
                if time.monotonic() - started + delay > self._deadline:
                    break
                log.info("dns: upsert %s: %s; listing again", name, exc.message)
                if delay:
                    await self._sleep(delay)
        raise DnsError(
            f"upsert {name} -> {ip} did not settle after {UPSERT_ROUNDS} rounds"
            + (f": {last.message}" if last else ""),
            code=last.code if last else None,
            status=last.status if last else None,
        )

    async def _settle(self, name: str, ip: str, mine: list[Any]) -> DnsRecord:
        """Keep one record of ours (the best match), delete the others, patch the keeper."""
        mine.sort(
            key=lambda r: (
                _field(r, "content") != ip,
                not _field(r, "proxied", False),
                _field(r, "ttl") != TTL_AUTO,
                str(_field(r, "created_on") or ""),
                str(_field(r, "id")),
            )
        )
        keep, extras = mine[0], mine[1:]
        for extra in extras:
            log.warning("dns: %s: deleting duplicate record %s", name, _field(extra, "id"))
            await self._delete_id(name, str(_field(extra, "id")))
        if (
            _field(keep, "content") == ip
            and _field(keep, "proxied", False) is True
            and _field(keep, "ttl") == TTL_AUTO
        ):
            return self._record(keep)
        record_id = str(_field(keep, "id"))
        updated = await self._request(
            f"update {name}",
            lambda: self._client.dns.records.edit(
                record_id,
                zone_id=self.zone_id,
                name=name,
                type="A",
                content=ip,
                ttl=TTL_AUTO,
                proxied=True,
                comment=self.marker,
            ),
        )
        log.info("dns: %s -> %s (updated %s)", name, ip, record_id)
        return self._record(updated) if updated is not None else DnsRecord(name, ip, record_id)

    async def _create(self, name: str, ip: str) -> DnsRecord:
        created = await self._request(
            f"create {name}",
            lambda: self._client.dns.records.create(
                zone_id=self.zone_id,
                name=name,
                type="A",
                content=ip,
                ttl=TTL_AUTO,
                proxied=True,
                comment=self.marker,
            ),
            repeatable=False,
        )
        if created is None:  # success without a body: look it up on the next round
            raise DnsError(f"create {name}: empty answer", status=0)
        log.info("dns: %s -> %s (created %s)", name, ip, _field(created, "id"))
        return self._record(created)

    async def delete(self, name: str) -> None:
        name = self._check_name(name)
        existing = await self._at(name)
        others = [r for r in existing if not self._is_ours(r)]
        if others:
            log.info("dns: %s: leaving %d record(s) without our marker", name, len(others))
        for record in existing:
            if self._is_ours(record):
                await self._delete_id(name, str(_field(record, "id")))
                log.info("dns: %s deleted (%s)", name, _field(record, "id"))
