"""DNS for users: `<subdomain>.<BASE_DOMAIN>` points at the public IP of the user's worker.

Contract:
- `DnsProvider` is what the control plane talks to. Implementations: `NoDns` (local mode,
  every call a no-op, nothing is ever "ours") and `control.dns.cloudflare.CloudflareDns`.
  * `verify()` checks that the provider can do its job, with one request per check (no
    retries of its own: the caller retries the whole check), and raises `DnsError` with a
    message an operator can act on (which setting, which permission). `is_refusal`
    tells a definite "the configuration is wrong" from an outage; control/dns/sync.py
    retries an outage in the background with `verify_delay`.
  * `upsert(name, ip)` makes `name` an A record of ours pointing at `ip` and nothing else
    of ours at that name: idempotent, safe to repeat after any failure, never leaves
    duplicates behind (it removes extra records of ours at that name).
  * `delete(name)` removes every record of ours at `name`; a missing record is success.
    It never touches a record without our marker.
  * `list_ours()` returns every record carrying our marker under BASE_DOMAIN (never the
    apex, never someone else's record).
  Every method is bounded in requests and time; failures surface as `DnsError`.
- `plan_dns(desired, actual)` is the pure half of the periodic reconciliation: given the
  names that should exist (fqdn -> IP, from the users table) and what `list_ours()` found,
  it says which names to upsert (missing, wrong IP, not proxied, duplicated) and which to
  delete (ours, not desired). It never plans deleting a record that is not ours, nor the
  apex, nor anything outside `base_domain` when that is given.
- `reconcile_dns(provider, desired, base_domain=...)` runs one round: list, plan, apply,
  with a cap on changes per round; one name failing does not stop the others.
- `retry_delay(status, attempt, retry_after, rand)` is the pure retry rule of one request,
  `verify_delay(attempt, error, rand)` that of the start-up check; both back off with
  shared/backoff.py.
- `fqdn(subdomain, base_domain)` builds and validates a record name.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from control.errors import IntegrationError
from shared.backoff import backoff_delay

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5  # tries of one request, the first included
BACKOFF_BASE = 1.0  # seconds before the first retry of a transient failure
BACKOFF_CAP = 30.0
RETRY_AFTER_CAP = 300.0  # Cloudflare's rate-limit window is 5 minutes: never wait longer
VERIFY_BASE = 2.0  # seconds before the second start-up check after an outage
VERIFY_CAP = 60.0  # an outage's end is noticed within a minute

# No HTTP answer at all (timeout, connection refused) is status 0. 52x are Cloudflare's
# own edge errors (origin unreachable, timeout...), transient by nature.
TRANSIENT_STATUSES = frozenset({0, 408, 500, 502, 503, 504, 520, 521, 522, 523, 524})

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class DnsRecord:
    name: str  # the full name, lower-case, no trailing dot
    content: str  # the IP address
    record_id: str | None = None
    proxied: bool = True
    ours: bool = True  # carries our marker (e.g. the Cloudflare comment of this cluster)


class DnsError(IntegrationError):
    """A DNS provider failure. `upstream_code` is the provider's error code (e.g. Cloudflare
    81044), `upstream_status` the HTTP status (0: no answer), `retry_after` seconds the
    provider asked us to wait. The message never contains a credential."""

    code = "dns_error"

    def __init__(
        self,
        message: str,
        *,
        upstream_code: int | None = None,
        upstream_status: int | None = None,
        retry_after: float | None = None,
        correlation_id: str | None = None,
    ) -> None:
        super().__init__(
            message,
            upstream_status=upstream_status,
            correlation_id=correlation_id,
            retry_after=retry_after,
        )
        self.upstream_code = upstream_code


@runtime_checkable
class DnsProvider(Protocol):
    name: str

    async def verify(self) -> None: ...

    async def upsert(self, name: str, ip: str) -> DnsRecord: ...

    async def delete(self, name: str) -> None: ...

    async def list_ours(self) -> list[DnsRecord]: ...

    async def close(self) -> None: ...


class NoDns:
    """DNS_PROVIDER=none: local mode, where `*.localhost` resolves without any record.
    Nothing is created, so nothing is ever ours and reconciliation has nothing to do."""

    name = "none"

    async def verify(self) -> None:
        return None

    async def upsert(self, name: str, ip: str) -> DnsRecord:
        return DnsRecord(name=name, content=ip, record_id=None, proxied=False, ours=False)

    async def delete(self, name: str) -> None:
        return None

    async def list_ours(self) -> list[DnsRecord]:
        return []

    async def close(self) -> None:
        return None


def fqdn(subdomain: str, base_domain: str) -> str:
    """`alice`, `Example.COM.` -> `alice.example.com`. The subdomain must be one DNS label
    (a-z, 0-9, inner hyphens, at most 63): a dot in it would escape the per-user scheme."""
    # No strip(): "vic2\n" is refused, not taken for "vic2" (another user's name).
    label = subdomain.lower()
    base = base_domain.strip().rstrip(".").lower()
    if not _LABEL.fullmatch(label):
        raise ValueError(f"subdomain {subdomain!r} is not a single DNS label")
    if not base or any(not _LABEL.fullmatch(part) for part in base.split(".")):
        raise ValueError(f"base domain {base_domain!r} is not a DNS name")
    return f"{label}.{base}"


def is_under(name: str, base_domain: str) -> bool:
    """True when `name` is strictly below `base_domain` (the apex itself is not)."""
    base = base_domain.rstrip(".").lower()
    return name.rstrip(".").lower().endswith("." + base)


@dataclass(frozen=True)
class DnsPlan:
    upsert: dict[str, str]  # fqdn -> IP, sorted by name
    delete: list[str]  # fqdns, sorted

    @property
    def empty(self) -> bool:
        return not self.upsert and not self.delete


def plan_dns(
    desired: Mapping[str, str],
    actual: Sequence[DnsRecord],
    *,
    base_domain: str | None = None,
) -> DnsPlan:
    """What to change so that `actual` matches `desired` (pure, deterministic).

    Upsert a desired name when it has no record of ours, when any record of ours there has
    another IP or is not proxied, or when there are several (upsert removes the extras).
    Delete a name that has a record of ours but is not desired. Records that are not ours
    are never deleted; with `base_domain`, neither is its apex nor any name outside it,
    and a desired name outside it is a programming error (ValueError), never written.
    """
    wanted = {name.rstrip(".").lower(): ip for name, ip in desired.items()}
    if base_domain is not None:
        outside = sorted(n for n in wanted if not is_under(n, base_domain))
        if outside:
            raise ValueError(f"desired names not under {base_domain}: {outside}")
    mine: dict[str, list[DnsRecord]] = {}
    for record in actual:
        if record.ours:
            mine.setdefault(record.name.rstrip(".").lower(), []).append(record)
    upsert: dict[str, str] = {}
    for name in sorted(wanted):
        ip = wanted[name]
        records = mine.get(name, [])
        if len(records) != 1 or records[0].content != ip or not records[0].proxied:
            upsert[name] = ip
    delete = sorted(
        name
        for name in mine
        if name not in wanted and (base_domain is None or is_under(name, base_domain))
    )
    return DnsPlan(upsert=upsert, delete=delete)


def retry_delay(
    status: int, attempt: int, retry_after: float | None, rand: float = 1.0
) -> float | None:
    """Seconds to wait before trying again after `attempt` (1 = the first try) failed with
    HTTP `status` (0 = no answer), or None: do not retry.

    429: the server's `Retry-After` when given (capped at the 5-minute window), else
    back-off. Transient statuses (see TRANSIENT_STATUSES): back-off, at most
    BACKOFF_BASE * 2^(attempt-1) capped at BACKOFF_CAP (`rand` = 1.0, the default) and
    at least half that (`rand` = 0.0; callers draw it so that clients that failed
    together do not retry in step). Anything else (4xx: our request or our rights are
    wrong) is not retried. After MAX_ATTEMPTS, give up.
    """
    if attempt < 1 or attempt >= MAX_ATTEMPTS:
        return None
    backoff = backoff_delay(attempt - 1, base=BACKOFF_BASE, cap=BACKOFF_CAP, rand=rand)
    if status == 429:
        if retry_after is None:
            return backoff
        return min(RETRY_AFTER_CAP, max(0.0, retry_after))
    if status in TRANSIENT_STATUSES:
        return backoff
    return None


def is_transient(status: int | None) -> bool:
    """No answer (0), a timeout, a rate limit or a server-side error: try again later."""
    return status is not None and (status in (0, 408, 429) or status >= 500)


def is_refusal(error: DnsError) -> bool:
    """A definite answer that the configuration is wrong, which no retry will change: the
    provider answered a 4xx other than 408/429 (token refused, no permission, unknown
    zone), or the check found the answer itself wrong (status None: an inactive token,
    BASE_DOMAIN outside the zone)."""
    return not is_transient(error.upstream_status)


def verify_delay(attempt: int, error: DnsError | None, rand: float) -> float:
    """Seconds before start-up check `attempt` + 1 after an outage: the provider's
    Retry-After after a 429 (capped at RETRY_AFTER_CAP), else backoff with jitter
    between VERIFY_BASE and VERIFY_CAP."""
    if error is not None and error.upstream_status == 429 and error.retry_after is not None:
        return min(RETRY_AFTER_CAP, max(0.0, error.retry_after))
    return backoff_delay(attempt - 1, base=VERIFY_BASE, cap=VERIFY_CAP, rand=rand)


def check_ip(ip: str) -> str:
    """The IPv4 address in canonical form; ValueError for anything else (A records only)."""
    return str(ipaddress.IPv4Address(ip.strip()))


@dataclass
class ReconcileReport:
    plan: DnsPlan
    upserted: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # name -> error message
    deferred: int = 0  # changes left for the next round (over max_changes)


async def reconcile_dns(
    provider: DnsProvider,
    desired: Mapping[str, str],
    *,
    base_domain: str,
    max_changes: int = 200,
) -> ReconcileReport:
    """One reconciliation round: list ours, plan, apply at most `max_changes` changes.

    The cap bounds a round in requests (a few per change), so that a first run over a
    large fleet spreads over several rounds instead of eating the whole rate budget. A
    failure on one name is recorded and the round goes on; `list_ours()` failing raises
    (there is nothing safe to do without knowing what exists).
    """
    actual = await provider.list_ours()
    plan = plan_dns(desired, actual, base_domain=base_domain)
    report = ReconcileReport(plan=plan)
    changes: list[tuple[str, str | None]] = [
        *plan.upsert.items(),
        *((n, None) for n in plan.delete),
    ]
    report.deferred = max(0, len(changes) - max_changes)
    for name, ip in changes[:max_changes]:
        try:
            if ip is None:
                await provider.delete(name)
                report.deleted.append(name)
            else:
                await provider.upsert(name, ip)
                report.upserted.append(name)
        except DnsError as exc:
            report.failed[name] = exc.message
            log.warning(
                "dns: %s %s failed: %s", "delete" if ip is None else "upsert", name, exc.message
            )
    return report
