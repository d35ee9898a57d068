"""The in-memory replay ledger (control/workers/nonces.py): a pair is refused while its
timestamp could still be accepted, forgotten after, and restored from the store."""

from __future__ import annotations

from pathlib import Path

from control.db.store import Store
from control.workers import nonces
from control.workers.nonces import NonceLedger, expiry
from shared.signing import MAX_CLOCK_SKEW

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
