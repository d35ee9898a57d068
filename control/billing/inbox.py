"""The Stripe webhook inbox: verify, store durably, then process in order with retries.

Contract:
- `receive(payload, signature)`, called by `POST /v1/stripe/webhook`
  (control/api/stripe_webhook.py), only verifies and stores: it returns once the raw
  event is committed (False for a duplicate), and wakes the processor. What is refused, with which domain
  error (400 `missing_signature`, `bad_signature`, `stale_event`, `future_event`,
  `malformed_event`, `wrong_mode`, `wrong_account`; 503 `not_configured`), is
  control/billing/verify.py's contract; nothing is written then. 503 `unavailable`
  when the event cannot be stored, so that Stripe retries the delivery. The age is
  judged against `int(time.time())`.
- Stored: the raw body as received (UTF-8 text), under the event id (unique), status
  'pending', due now. A repeated id changes nothing and is reported as a duplicate.
- `process_due(apply)` takes due events ('pending' or 'failing', next_attempt_at <= now)
  oldest first by (created, received_at, id), decodes each into a `BillingFact`
  (control/billing/decode.py), re-fetches the subscription when an API key is set,
  calls `apply(fact)`, and marks the event 'done'. When decoding, the re-fetch or
  `apply` raises, the event stays due later: attempts + 1, `last_error`, next attempt
  after `backoff(attempts)`, and status 'failing' from 5 attempts on (still retried).
  Ignored event types are marked done without calling `apply`. Each event's
  bookkeeping is its own transaction, after `apply` returns: delivery to `apply` is
  at least once (a crash between the two applies the event again), so `apply` must
  be idempotent. A failing event does not hold back later ones: `apply` orders
  states by `fact.state_at`.
- `run(apply, wake)` repeats `process_due` until cancelled, waiting for `wake` or
  `interval` seconds between rounds. `idle` is set while `run` waits with every
  delivery stored before its last round processed (or failed and rescheduled); each
  stored delivery (`wake`) clears it. Tests await it instead of polling.
- `prune(now)` deletes events that are 'done' and were processed more than
  `keep_done` seconds ago (default 7 days: Stripe retries a delivery for up to 3 days,
  and a stored id is what makes a redelivery a duplicate), in bounded batches that
  each are their own transaction. Pending and failing events are never pruned.
- Neither the webhook secret nor the API key is ever logged or stored in `last_error`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiosqlite
import stripe

from control.billing.decode import HANDLED_TYPES, BillingFact, DecodeError, decode, refreshed
from control.billing.verify import Endpoint, Unavailable, verify_delivery
from control.clock import iso
from control.db.store import Store
from control.errors import ClawfleetError
from shared.backoff import backoff_delay

__all__ = [
    "HANDLED_TYPES",
    "ApplyFn",
    "BillingFact",
    "DecodeError",
    "StripeInbox",
    "Unavailable",
    "backoff",
    "decode",
]

log = logging.getLogger(__name__)

ApplyFn = Callable[[BillingFact], Awaitable[None]]

FAILING_AFTER = 5  # attempts after which an event is listed as 'failing'
BACKOFF_BASE = 5.0  # seconds before the first retry
REFETCH_TIMEOUT = 20.0  # seconds for one subscription re-fetch (also the HTTP timeout)
_MAX_ERROR = 500  # characters of last_error kept
_DUE_STATUSES = ("pending", "failing")
_BATCH = 100  # events per round of run()
KEEP_DONE = 7 * 86400.0  # seconds a processed event's id is kept for deduplication
PRUNE_BATCH = 500  # rows per prune transaction: the writer is never held for long


def backoff(
    attempts: int,
    *,
    base: float = BACKOFF_BASE,
    cap: float = 3600.0,
    jitter: float = 0.2,
    rand: float | None = None,
) -> float:
    """Seconds to wait after the `attempts`-th failure: base * 2**(attempts-1), capped,
    then shortened by up to `jitter` (a fraction, at most 0.5) so that events failing
    together do not retry in lockstep. `rand` in [0, 1) fixes the jitter (tests); None
    draws one. Never more than `cap`, never less than (1 - jitter) * min(cap, nominal).

    The formula is shared/backoff.py's, whose jitter spans [d/2, d]: `rand` is mapped
    onto the top 2 * jitter of that span, which keeps the inbox's narrower spread."""
    u = random.random() if rand is None else min(max(rand, 0.0), 1.0)
    spread = min(max(jitter, 0.0), 0.5)
    return backoff_delay(attempts - 1, base=base, cap=cap, rand=1.0 - 2.0 * spread * u)


class StripeInbox:
    def __init__(
        self,
        store: Store,
        webhook_secret: str,
        *,
        api_key: str = "",
        api_base: str | None = None,
        tolerance: int = 300,
        max_backoff: float = 3600.0,
        refetch_timeout: float = REFETCH_TIMEOUT,
        livemode: bool = False,
        account_id: str = "",
        keep_done: float = KEEP_DONE,
    ) -> None:
        if tolerance <= 0:
            # The library reads 0 as "no age check"; a replay window must exist.
            raise ValueError("tolerance must be a positive number of seconds")
        self.store = store
        self._endpoint = Endpoint(webhook_secret, tolerance, livemode, account_id)
        self._secret = webhook_secret
        self._api_key = api_key
        self._api_base = api_base
        self.max_backoff = max_backoff
        self.refetch_timeout = refetch_timeout
        self.keep_done = keep_done
        self._client: stripe.StripeClient | None = None
        self._wake_event: asyncio.Event | None = None
        self.idle = asyncio.Event()
        # One processing round at a time: run() and an admin-triggered round must not
        # hand the same event to apply() twice concurrently.
        self._processing = asyncio.Lock()

    # --- intake -------------------------------------------------------------------
    async def receive(self, payload: bytes, signature: str | None) -> bool:
        """Verify and store one delivery. True when stored, False for a duplicate id."""
        now = time.time()
        try:
            event = verify_delivery(payload, signature, self._endpoint, int(now))
        except ClawfleetError as exc:
            # Operators diagnose signature trouble from this line (docs/stripe.md).
            log.warning("refused Stripe delivery (%s): %s", exc.code, exc.message)
            raise
        text = payload.decode("utf-8")  # verify_delivery proved it decodes

        async def insert(conn: aiosqlite.Connection) -> bool:
            async with conn.execute(  # `async with`: sent now, for its row count
                "INSERT INTO stripe_events (id, type, created, payload, received_at, status, "
                "attempts, next_attempt_at) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?) "
                "ON CONFLICT (id) DO NOTHING",
                (event["id"], event["type"], event["created"], text, now, now),
            ) as cursor:
                return cursor.rowcount == 1

        try:
            stored = await self.store.write(insert)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Broad on purpose: whatever kept the event from being stored (a closed or
            # failing database, a refused insert), Stripe must deliver it again, so the
            # answer is 503. Name the database problem, never the payload (customer data).
            log.error("cannot store Stripe event %s: %s", event["id"], self._scrub(repr(exc)))
            raise Unavailable("cannot store the event now; Stripe will retry") from None
        if stored:
            log.info("stored Stripe event %s (%s)", event["id"], event["type"])
            self.wake()
        else:
            log.info("duplicate Stripe event %s ignored", event["id"])
        return stored

    def wake(self) -> None:
        """Wake the processor (`run`) early; a no-op before `run` starts."""
        self.idle.clear()
        if self._wake_event is not None:
            self._wake_event.set()

    # --- processing ---------------------------------------------------------------
    async def process_due(
        self, apply: ApplyFn, *, now: float | None = None, limit: int = 100
    ) -> int:
        """Process up to `limit` due events, oldest first; the number processed
        (successfully or not)."""
        async with self._processing:
            at = time.time() if now is None else now
            rows = await self.store.fetch_all(
                "SELECT id FROM stripe_events WHERE status IN (?, ?) AND next_attempt_at <= ? "
                "ORDER BY created, received_at, id LIMIT ?",
                (*_DUE_STATUSES, at, limit),
            )
            for row in rows:
                await self._process_one(str(row["id"]), apply, at)
            return len(rows)

    async def _process_one(self, event_id: str, apply: ApplyFn, now: float) -> None:
        row = await self.store.fetch_one(
            "SELECT type, payload, attempts FROM stripe_events WHERE id = ? AND status IN (?, ?)",
            (event_id, *_DUE_STATUSES),
        )
        if row is None:
            return
        try:
            fact = await self._fact(str(row["payload"]))
            if fact is not None:
                await apply(fact)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure of one event is recorded and retried later
            await self._record_failure(event_id, str(row["type"]), int(row["attempts"]), exc, now)
            return
        await self._mark_done(event_id, now)

    async def _fact(self, payload: str) -> BillingFact | None:
        try:
            event = json.loads(payload)
        except ValueError as exc:
            raise DecodeError(f"stored payload is not JSON: {exc}") from None
        if not isinstance(event, Mapping):
            raise DecodeError("stored payload is not a JSON object")
        fact = decode(event)
        # A deleted subscription is final: a re-fetch would only say "canceled".
        if (
            fact is None
            or fact.subscription_id is None
            or not self._api_key
            or fact.status == "deleted"
        ):
            return fact
        subscription = await self._retrieve_subscription(fact.subscription_id)
        return refreshed(fact, subscription, int(time.time()))

    async def _retrieve_subscription(self, subscription_id: str) -> dict[str, Any]:
        client = self._stripe_client()

        def retrieve() -> dict[str, Any]:
            return client.v1.subscriptions.retrieve(subscription_id).to_dict(for_json=True)

        # The stripe client is synchronous: keep it off the event loop, and bound it
        # (the HTTP client's timeout ends the thread; this one frees the coroutine).
        async with asyncio.timeout(self.refetch_timeout):
            return await asyncio.to_thread(retrieve)

    def _stripe_client(self) -> stripe.StripeClient:
        if self._client is None:
            self._client = stripe.StripeClient(
                self._api_key,
                base_addresses={"api": self._api_base} if self._api_base else None,
                # Our own backoff retries; the library's would hold the thread.
                max_network_retries=0,
                http_client=stripe.RequestsClient(timeout=self.refetch_timeout),
            )
        return self._client

    async def _mark_done(self, event_id: str, now: float) -> None:
        async def mark(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "UPDATE stripe_events SET status = 'done', processed_at = ?, last_error = NULL "
                "WHERE id = ? AND status IN (?, ?)",
                (now, event_id, *_DUE_STATUSES),
            )

        await self.store.write(mark)

    async def _record_failure(
        self, event_id: str, event_type: str, attempts: int, exc: Exception, now: float
    ) -> None:
        attempts += 1
        delay = backoff(attempts, cap=self.max_backoff)
        status = "failing" if attempts >= FAILING_AFTER else "pending"
        error = self._scrub(f"{type(exc).__name__}: {exc}")[:_MAX_ERROR]

        async def record(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "UPDATE stripe_events SET attempts = ?, status = ?, last_error = ?, "
                "next_attempt_at = ? WHERE id = ? AND status IN (?, ?)",
                (attempts, status, error, now + delay, event_id, *_DUE_STATUSES),
            )

        await self.store.write(record)
        log.warning(
            "Stripe event %s (%s) failed (attempt %d, retry in %.0f s): %s",
            event_id,
            event_type,
            attempts,
            delay,
            error,
        )

    def _scrub(self, text: str) -> str:
        for secret in (self._secret, self._api_key):
            if secret:
                text = text.replace(secret, "[redacted]")
        return text

    async def run(self, apply: ApplyFn, wake: asyncio.Event, interval: float = 5.0) -> None:
        """Process due events until cancelled, waking on `wake` or every `interval` s."""
        self._wake_event = wake
        while True:
            # Clear before the round: a wake during the round makes the next wait return
            # at once, so no stored event waits for the interval.
            wake.clear()
            processed = 0
            try:
                processed = await self.process_due(apply, limit=_BATCH)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Last resort, on purpose: the inbox loop must never die; one line, and the
                # next round retries.
                log.error(
                    "Stripe inbox round failed (%s); retrying in %.0f s",
                    self._scrub(f"{type(exc).__name__}: {exc}"),
                    interval,
                )
            if processed >= _BATCH:
                continue  # a full batch: more may be due right now
            if not wake.is_set():  # else a delivery arrived during the round
                self.idle.set()
            try:
                async with asyncio.timeout(interval):
                    await wake.wait()
            except TimeoutError:
                pass

    # --- retention ----------------------------------------------------------------
    async def prune(self, now: float | None = None, batch: int = PRUNE_BATCH) -> int:
        """Deletes done events processed more than `keep_done` s ago; the number deleted.
        Each batch is a bounded DELETE through the (status, processed_at) index."""
        cutoff = (time.time() if now is None else now) - self.keep_done
        total = 0
        while True:

            async def delete(conn: aiosqlite.Connection) -> int:
                async with conn.execute(
                    "DELETE FROM stripe_events WHERE id IN (SELECT id FROM stripe_events "
                    "WHERE status = 'done' AND processed_at < ? LIMIT ?)",
                    (cutoff, batch),
                ) as cursor:
                    return int(cursor.rowcount)

            deleted = await self.store.write(delete)
            total += deleted
            if deleted < batch:
                break
        if total:
            log.info("pruned %d processed Stripe events older than %.0f s", total, self.keep_done)
        return total

    async def prune_job(self) -> None:
        """`prune` as a periodic job (control/app.py)."""
        await self.prune()

    # --- inspection ---------------------------------------------------------------
    async def failing(self) -> list[dict[str, Any]]:
        rows = await self.store.fetch_all(
            "SELECT id, type, attempts, last_error, next_attempt_at FROM stripe_events "
            "WHERE status = 'failing' ORDER BY created, received_at, id"
        )
        return [
            {
                "id": row["id"],
                "type": row["type"],
                "attempts": row["attempts"],
                "last_error": row["last_error"],
                "next_attempt_at": iso(row["next_attempt_at"]),
            }
            for row in rows
        ]

    async def counts(self) -> dict[str, int]:
        rows = await self.store.fetch_all(
            "SELECT status, COUNT(*) AS n FROM stripe_events GROUP BY status"
        )
        counts = {"pending": 0, "failing": 0, "done": 0}
        counts.update({str(row["status"]): int(row["n"]) for row in rows})
        return counts
