"""The lease decision, pure: given the lease row as read (or none), who I am, the time
and the lease's TTL, whether to acquire, renew or wait, and when to look again.

Contract (`decide`):
- no row, or a row whose `expires_at` has passed (whoever held it): `acquire`, with the
  next epoch (1 for no row): a new term, so that anything the old one still sends is
  fenced off, even when the old holder was me;
- a live row of mine: `renew` (same epoch, expiry pushed to now + TTL);
- a live row of another holder: `wait`.
The next look is `renew_every(ttl)` away (a third of the TTL: two renewals may fail
before the lease lapses), and when waiting, no later than the holder's expiry: a holder
that released its lease at shutdown is replaced within one interval, a crashed one as
its lease runs out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Action = Literal["acquire", "renew", "wait"]


@dataclass(frozen=True)
class Lease:
    """A lease row as read."""

    holder: str
    epoch: int
    expires_at: float


@dataclass(frozen=True)
class Decision:
    action: Action
    lease: Lease  # the row after the decision (unchanged when waiting)
    next_at: float  # when to decide again


def renew_every(ttl: float) -> float:
    return ttl / 3


def decide(row: Lease | None, me: str, now: float, ttl: float) -> Decision:
    interval = renew_every(ttl)
    if row is None or row.expires_at <= now:
        epoch = 1 if row is None else row.epoch + 1
        return Decision("acquire", Lease(me, epoch, now + ttl), now + interval)
    if row.holder == me:
        return Decision("renew", Lease(me, row.epoch, now + ttl), now + interval)
    return Decision("wait", row, min(row.expires_at, now + interval))
