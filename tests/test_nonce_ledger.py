"""The in-memory replay ledger (control/workers/nonces.py): a pair is refused while its
timestamp could still be accepted, forgotten after, and restored from the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from control.db.backend import open_store
from control.db.store import Store, fetch_all
from control.workers import nonces
from control.workers.nonces import NonceLedger, expiry
from shared.signing import MAX_CLOCK_SKEW
from tests.fixtures import make_settings

T0 = 1_800_000_000
NONCE = "ab" * 16


def test_a_pair_is_refused_until_it_expires_then_forgotten() -> None:
    ledger = NonceLedger()
    assert ledger.claim("srv-a", NONCE, T0)
    assert not ledger.claim("srv-a", NONCE, T0 + 5)  # a replay, whatever it claims
    assert ledger.claim("srv-b", NONCE, T0)  # the same nonce under another key
    ledger.prune(expiry(T0) - 1)
    assert not ledger.claim("srv-a", NONCE, T0) and len(ledger) == 2
    ledger.prune(expiry(T0))
    assert len(ledger) == 0
    assert ledger.claim("srv-a", NONCE, T0 + 2 * MAX_CLOCK_SKEW)


def test_prune_drops_only_what_expired() -> None:
    ledger = NonceLedger()
    for i in range(100):
        assert ledger.claim("srv-a", f"{i:032x}", T0 + i)
    ledger.prune(expiry(T0 + 49))
    assert len(ledger) == 50
    assert not ledger.claim("srv-a", f"{50:032x}", T0 + 50)
    assert ledger.claim("srv-a", f"{49:032x}", T0 + 49 + 2 * MAX_CLOCK_SKEW)


async def test_load_restores_the_pairs_still_inside_the_window(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "db.sqlite"))
    await store.open()
    try:
        await store.write(
            lambda conn: nonces.persist_many(
                conn, [("srv-a", NONCE, T0), ("srv-a", "cd" * 16, T0 - 1000)]
            )
        )
        ledger = NonceLedger()
        await ledger.load(store, now=T0)
        assert len(ledger) == 1
        assert not ledger.claim("srv-a", NONCE, T0)
        assert ledger.claim("srv-a", "cd" * 16, T0)
    finally:
        await store.close()


A, B, C = ("srv-a", "a1" * 16, T0), ("srv-a", "b2" * 16, T0), ("srv-b", "a1" * 16, T0)


@pytest.mark.parametrize(
    ("stored", "batch", "fresh"),
    [
        ([], [A, B, C], [True, True, True]),  # the usual batch: one statement
        ([B], [A, B, C], [True, False, True]),  # one replay fails only itself
        ([], [A, B, A], [True, True, False]),  # a copy inside the batch is a replay too
        ([A, B, C], [C, A], [False, False]),
        ([], [], []),
    ],
)
async def test_a_batch_says_which_pairs_are_new_and_keeps_each_once(
    tmp_path: Path,
    stored: list[tuple[str, str, int]],
    batch: list[tuple[str, str, int]],
    fresh: list[bool],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(tmp_path)
    store = open_store(settings.database_url, settings.database_path)
    await store.open()
    try:
        if stored:
            await store.write(lambda conn: nonces.persist_many(conn, stored))
        slow = []  # the row-by-row path's statements (INSERT ... RETURNING)
        monkeypatch.setattr(nonces, "fetch_all", lambda *a: slow.append(a) or fetch_all(*a))
        assert await store.write(lambda conn: nonces.persist_many(conn, batch)) == fresh
        # A batch of new pairs takes the one prepared statement, on either backend.
        assert bool(slow) == (not all(fresh))
        rows = await store.fetch_all("SELECT key_id, nonce FROM nonces ORDER BY key_id, nonce")
        assert [tuple(r) for r in rows] == sorted({p[:2] for p in stored + batch})
    finally:
        await store.close()
