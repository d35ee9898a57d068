"""Heartbeats, written with group commit.

Contract: `HeartbeatWriter.submit` returns only after the heartbeat is committed
(nonce, report, liveness and any user that became running, all in one transaction).
The resources stored are the claim clamped to what the control plane knows of the
worker; a worker that claims more is flagged and cordoned (control/workers/trust.py).
A heartbeat's backup reports are recorded on the jobs given to that worker, in the same
transaction (control/backup_jobs/reports.py); a job they finish bumps the worker's
generation, and the worker is among the outcome's servers to wake. The agent features
a heartbeat declares are stored in the same UPDATE (unknown names dropped); when they
differ from the stored ones, the worker's generation is bumped (its desired set may now
carry specs it was denied, or lose ones it can no longer run), it is among the servers
to wake, and `worker_features` is recorded, with a `user_withheld` event for each user
there whose spec needs a feature it now lacks (`needs`, control/users/features.py).
`accept` admits a long-poll the same way (control/workers/assignments.py): its
nonce joins the batch, checked against the same read of the worker (revoked or
missing: 403, nothing written), and it gets the worker's generation from that read.
Heartbeats that arrive while a transaction is in flight are queued and committed
together in the next one, so a large fleet costs a handful of SQLite round trips
per batch instead of per heartbeat. A revoked or unknown worker's heartbeat fails
on its own (403/401) and writes nothing; it never fails the others in its batch. So
does a request whose nonce the database already holds (401 `replayed_request`: a copy
another replica sharing the database accepted, control/workers/nonces.py). Nor
does a heartbeat whose write fails: a failed batch is split and retried until the
failing heartbeat is alone, and only its request gets the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from dataclasses import dataclass, field

import aiosqlite
import msgspec

from control.backup_jobs import reports as backup_reports
from control.db import events
from control.db.store import Row, Store, fetch_all
from control.errors import ClawfleetError, Forbidden, Unauthorized
from control.users import features, records
from control.users.rooms import HOLDERS_SQL
from control.workers import nonces, servers, trust
from control.workers.auth import REVOKED_STATUSES, AgentCaller, check_not_revoked
from shared.protocol import Heartbeat

# (worker's generation, servers whose desired set shrank or lost a finished backup job)
Outcome = tuple[int, list[str]]


@dataclass
class _Poll:
    """A long-poll's admission: its nonce, committed with the heartbeats."""

    caller: AgentCaller
    future: asyncio.Future[Outcome] = field(repr=False)

    @property
    def worker_id(self) -> str:
        return self.caller.key_id


@dataclass
class _Beat:
    caller: AgentCaller
    heartbeat: Heartbeat
    interval: float
    future: asyncio.Future[Outcome] = field(repr=False)

    @property
    def worker_id(self) -> str:
        return self.caller.key_id

    @property
    def healthy(self) -> list[str]:
        return [
            c.user_id
            for c in self.heartbeat.containers
            if c.state == "running" and c.health == "healthy"
        ]


class HeartbeatWriter:
    def __init__(self, store: Store, needs: frozenset[str] = frozenset()) -> None:
        self._store = store
        self._needs = needs  # the agent features every user's spec needs
        self._queue: list[_Beat | _Poll] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, caller: AgentCaller, heartbeat: Heartbeat, interval: float) -> Outcome:
        beat = _Beat(caller, heartbeat, interval, asyncio.get_running_loop().create_future())
        return await self._queued(beat)

    async def accept(self, caller: AgentCaller) -> int:
        """Admits a long-poll: its nonce is committed in the next batch, once the worker
        is seen not revoked there (a missing worker counts as deleted: 403); returns the
        worker's generation as that transaction read it."""
        generation, _ = await self._queued(
            _Poll(caller, asyncio.get_running_loop().create_future())
        )
        return generation

    async def _queued(self, item: _Beat | _Poll) -> Outcome:
        self._queue.append(item)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="heartbeat-writer")
        return await item.future

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            await self._commit(batch)

    async def _commit(self, batch: list[_Beat | _Poll]) -> None:
        """One transaction for the batch. If it fails, each half is retried in its own
        transaction, down to the failing heartbeat alone: it fails only its own
        request, for about 2*log2(batch) extra transactions, and the others commit."""
        try:
            outcomes = await self._store.write(
                functools.partial(_apply, batch=batch, now=time.time(), needs=self._needs)
            )
        except Exception as exc:  # whatever it is, it belongs to one heartbeat: find it
            if len(batch) == 1:
                _settle(batch[0], exc)
                return
            half = len(batch) // 2
            await self._commit(batch[:half])
            await self._commit(batch[half:])
            return
        for beat, outcome in zip(batch, outcomes, strict=True):
            _settle(beat, outcome)

    async def close(self) -> None:
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task


def _settle(beat: _Beat | _Poll, outcome: Outcome | BaseException) -> None:
    if beat.future.done():  # its request went away
        return
    if isinstance(outcome, BaseException):
        beat.future.set_exception(outcome)
    else:
        beat.future.set_result(outcome)


async def _apply(
    conn: aiosqlite.Connection, batch: list[_Beat | _Poll], now: float, needs: frozenset[str]
) -> list[Outcome | ClawfleetError]:
    ids = sorted({b.worker_id for b in batch})
    marks = ", ".join("?" for _ in ids)
    rows = {
        r["id"]: r
        for r in await fetch_all(
            conn,
            f"SELECT id, status, generation, features, {trust.CEILING_SQL} FROM servers "
            f"WHERE id IN ({marks})",
            ids,
        )
    }
    outcomes = await _admitted(conn, batch, rows)
    accepted = [
        b
        for b, o in zip(batch, outcomes, strict=True)
        if isinstance(b, _Beat) and not isinstance(o, ClawfleetError)
    ]
    if not accepted:
        return outcomes
    await servers.record_heartbeats(
        conn, [_server_update(b, rows[b.worker_id], now) for b in accepted]
    )
    for beat in accepted:
        _, overclaim = trust.trust(_claim(beat), trust.ceiling_of(rows[beat.worker_id]))
        if overclaim:
            await servers.flag_overclaim(conn, beat.worker_id, overclaim, now)
    for worker_id in sorted(
        {b.worker_id for b in accepted if rows[b.worker_id]["status"] == "unhealthy"}
    ):
        await events.record(
            conn,
            "worker_status",
            "unhealthy -> active: heartbeat received",
            server_id=worker_id,
            at=now,
        )
    released = await _users_now_healthy(conn, accepted, now)
    for worker_id in await _backup_reports(conn, accepted, now):
        released.setdefault(worker_id, []).append(worker_id)
    for worker_id in await _features_changed(conn, accepted, rows, needs, now):
        released.setdefault(worker_id, []).append(worker_id)
    return [
        (outcome[0], released.get(beat.worker_id, []))
        if not isinstance(outcome, ClawfleetError)
        else outcome
        for beat, outcome in zip(batch, outcomes, strict=True)
    ]


async def _admitted(
    conn: aiosqlite.Connection, batch: list[_Beat | _Poll], rows: dict[str, Row]
) -> list[Outcome | ClawfleetError]:
    """Each request's outcome so far: refused (unknown, revoked, or its nonce already
    in the database: a replay another replica accepted), else admitted, its nonce
    written. A replay fails its own request, never the batch's transaction."""
    outcomes = [_admission(item, rows.get(item.worker_id)) for item in batch]
    admitted = [i for i, o in enumerate(outcomes) if not isinstance(o, ClawfleetError)]
    fresh = await nonces.persist_many(
        conn,
        [(batch[i].worker_id, batch[i].caller.nonce, batch[i].caller.timestamp) for i in admitted],
    )
    for i, new in zip(admitted, fresh, strict=True):
        if not new:
            outcomes[i] = nonces.replayed(batch[i].worker_id)
    return outcomes


def _admission(item: _Beat | _Poll, row: Row | None) -> Outcome | ClawfleetError:
    """The worker's generation, or why its request is refused (unknown or revoked)."""
    if isinstance(item, _Poll):  # as before it joined the batch: a missing row is deleted
        try:
            check_not_revoked(item.worker_id, "deleted" if row is None else str(row["status"]))
        except Forbidden as exc:
            return exc
    if row is None:
        return Unauthorized("no registered worker has this id", code="unknown_worker")
    if row["status"] in REVOKED_STATUSES:
        return Forbidden(f"worker {item.worker_id} is {row['status']}", code="worker_revoked")
    return (int(row["generation"]), [])


def _claim(beat: _Beat) -> trust.Capacity:
    res = beat.heartbeat.resources
    return trust.Capacity(res.cpus, res.memory_mb, res.disk_gb)


def _server_update(beat: _Beat, row: Row, now: float) -> tuple[object, ...]:
    hb = beat.heartbeat
    # What placement counts on is what we know the worker has, never more.
    trusted, _ = trust.trust(_claim(beat), trust.ceiling_of(row))
    report = msgspec.json.encode(
        {
            "containers": hb.containers,
            "host": hb.host,
            "resources": hb.resources,
            # Block volumes' mounts (issue 13): control/volumes/runner.py reads them.
            "volumes": hb.volumes,
        }
    ).decode()
    return (
        now,
        hb.agent_version,
        features.stored(hb.features),
        hb.applied_generation,
        trusted.cpus,
        trusted.memory_mb,
        trusted.disk_gb,
        report,
        beat.interval,
        now,
        beat.worker_id,
    )


async def _features_changed(
    conn: aiosqlite.Connection,
    beats: list[_Beat],
    rows: dict[str, Row],
    needs: frozenset[str],
    now: float,
) -> set[str]:
    """Workers whose agent now declares other features than stored, bumped, with their
    events. Rare (an agent upgraded or replaced in place): the hot path only compares."""
    changed: set[str] = set()
    for beat in beats:
        was, now_stored = rows[beat.worker_id]["features"], features.stored(beat.heartbeat.features)
        if was == now_stored or beat.worker_id in changed:
            continue
        changed.add(beat.worker_id)
        await servers.bump_generation(conn, beat.worker_id)
        reason = features.withheld_reason(beat.worker_id, needs, features.parse(now_stored))
        await events.record(
            conn,
            "worker_features",
            f"agent {beat.heartbeat.agent_version} declares: {now_stored or 'no features'}"
            + (f"; {reason}" if reason else ""),
            server_id=beat.worker_id,
            at=now,
        )
        if reason:
            held = await fetch_all(
                conn,
                f"SELECT DISTINCT id FROM ({HOLDERS_SQL}) WHERE holder = ? ORDER BY id",
                (beat.worker_id,),
            )
            for user in held:
                await events.record(
                    conn,
                    "user_withheld",
                    reason,
                    server_id=beat.worker_id,
                    user_id=user["id"],
                    at=now,
                )
    return changed


async def _backup_reports(conn: aiosqlite.Connection, beats: list[_Beat], now: float) -> set[str]:
    """Records each worker's backup reports on the jobs it was given; returns the
    workers a finished job leaves, bumped: their long-polls drop it (and give back a
    restored user's container)."""
    changed: set[str] = set()
    for beat in beats:
        if beat.heartbeat.backups and await backup_reports.record(
            conn, beat.worker_id, beat.heartbeat.backups, now
        ):
            await servers.bump_generation(conn, beat.worker_id)
            changed.add(beat.worker_id)
    return changed


async def _users_now_healthy(
    conn: aiosqlite.Connection, beats: list[_Beat], now: float
) -> dict[str, list[str]]:
    """Users reported running and healthy that were not yet `running` (or were being
    moved) become running; a finished move lets the old server drop the container."""
    healthy = {(b.worker_id, uid) for b in beats for uid in b.healthy}
    if not healthy:
        return {}
    released: dict[str, list[str]] = {}
    for server_id, _user, moved_from in await records.mark_running(conn, healthy, now):
        if moved_from:
            # Make-before-break: only now may the old server remove its container.
            await servers.bump_generation(conn, moved_from)
            released.setdefault(server_id, []).append(moved_from)
    return released
