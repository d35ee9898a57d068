"""Cloudflare's published IP ranges, the only sources the firewall admits on 443.

Contract:
- `fetch_ranges(api)` reads `GET /ips` once through the Cloudflare SDK under the DNS
  integration's `CloudflareApi.request` (its rate limiter and `DnsError`s; the caller's
  next round is the retry) and
  returns `Known` ranges, checked by `firewall_rules.check_ranges`. A reply that fails
  the check is a `DnsError` too (status None: a definite, not a transient, answer).
- `RangesFile(path)` keeps the last good ranges across restarts, so that a control plane
  started during a Cloudflare outage still knows them. `load()` returns None for a
  missing, unreadable or invalid file (logged, never raised: the next refresh writes a
  good one); `save(known)` replaces the file atomically (temporary file, fsync, rename).
  The ranges are public data: the file holds nothing secret.
- `refresh_due(known, now, interval)`: no ranges yet, or the last good read is
  `interval` seconds old (a day by default: Cloudflare announces changes well ahead).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from control.dns.cloudflare_api import CloudflareApi, field
from control.dns.provider import DnsError
from control.edge.firewall_rules import Ranges, check_ranges

log = logging.getLogger(__name__)

DAY = 86400.0


@dataclass(frozen=True)
class Known:
    """Ranges that passed the check, when they were read (epoch seconds) and their etag."""

    ranges: Ranges
    fetched_at: float
    etag: str = ""


async def fetch_ranges(api: CloudflareApi, now: float) -> Known:
    # Tried once: the next round retries, and a round must not wait out an outage here.
    reply = await api.request("GET /ips", api.client.ips.list, once=True)
    ipv4 = list(field(reply, "ipv4_cidrs") or [])
    ipv6 = list(field(reply, "ipv6_cidrs") or [])
    try:
        ranges = check_ranges(ipv4, ipv6)
    except ValueError as exc:
        raise DnsError(f"Cloudflare GET /ips: refusing the published ranges: {exc}") from None
    return Known(ranges, now, str(field(reply, "etag") or ""))


def refresh_due(known: Known | None, now: float, interval: float = DAY) -> bool:
    return known is None or now - known.fetched_at >= interval


class RangesFile:
    """The last good ranges on disk (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Known | None:
        try:
            data = json.loads(self.path.read_text())
            ranges = check_ranges(data["ipv4_cidrs"], data["ipv6_cidrs"])
            return Known(ranges, float(data["fetched_at"]), str(data.get("etag") or ""))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("edge: ignoring %s: %s", self.path, exc)
            return None

    def save(self, known: Known) -> None:
        data = {
            "ipv4_cidrs": list(known.ranges.ipv4),
            "ipv6_cidrs": list(known.ranges.ipv6),
            "fetched_at": known.fetched_at,
            "etag": known.etag,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(data, out, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
