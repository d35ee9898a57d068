"""Fencing: a deposed leader's singleton writes fail, in the database, in the write's
own transaction.

Contract:
- `TERM` is set (by leadership.py) in the context singleton work runs in: the lease's
  name, this replica's holder id and the epoch it leads with. Tasks the work starts
  inherit it; nothing else has it.
- `fence(clock, on_deposed)` is a commit hook (Store.add_commit_hook): for a write made
  with a term, it checks, after the write's statements and before COMMIT, that the
  lease row still names that holder and epoch and has not expired at `clock()`;
  otherwise it calls `on_deposed()` and raises `NotLeader` (503 `not_leader`), which
  rolls the whole write back. A write made without a term costs nothing: no query.
  Like every commit hook it runs on the store's write thread, not the event loop's:
  `on_deposed` must be safe to call from there.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

import aiosqlite

from control.db.store import AfterCommit, CommitHook
from control.errors import ServiceUnavailable
from control.leadership import lease


class NotLeader(ServiceUnavailable):
    """A singleton's write by a replica that no longer holds the lease it started with."""

    code = "not_leader"


@dataclass(frozen=True)
class Term:
    name: str
    holder: str
    epoch: int


TERM: ContextVar[Term | None] = ContextVar("leader_term", default=None)


def fence(clock: Callable[[], float], on_deposed: Callable[[], None]) -> CommitHook:
    async def check(conn: aiosqlite.Connection) -> AfterCommit | None:
        term = TERM.get()
        if term is None:
            return None
        now = clock()
        if not await lease.holds(
            conn, name=term.name, holder=term.holder, epoch=term.epoch, now=now
        ):
            on_deposed()
            raise NotLeader(
                f"{term.holder} no longer leads {term.name} with epoch {term.epoch}: "
                "a singleton's write was rolled back"
            )
        return None

    return check
