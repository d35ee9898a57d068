"""Which heartbeats are recorded outside the write lock (control/workers/heartbeat_rows.py)."""

from __future__ import annotations

from typing import Any

import pytest

from control.workers.heartbeat_rows import full_row, needs_lock, plain_row
from shared.protocol import BackupReport, Heartbeat, Resources

STORED: dict[str, Any] = {
    "status": "active",
    "features": "block-volumes,cpu-weight",
    "known_cpus": 4,
    "known_memory_mb": 8192,
    "known_disk_gb": 80,
    "cpus": 4.0,
    "memory_mb": 8192,
    "disk_gb": 80,
}


def beat(**changes: Any) -> Heartbeat:
    fields: dict[str, Any] = {
        "agent_version": "1.0.0",
        "applied_generation": 3,
        "resources": Resources(cpus=4, memory_mb=8192, disk_gb=80),
        "containers": [],
        "features": ["cpu-weight", "block-volumes"],
    }
    return Heartbeat(**(fields | changes))


@pytest.mark.parametrize(
    ("hb", "row", "becoming", "locked"),
    [
        (beat(), STORED, False, False),  # the fleet's usual heartbeat
        (beat(), STORED | {"disk_gb": 60}, False, False),  # disk: placement does not count it
        (beat(applied_generation=9), STORED, False, False),
        (beat(), STORED, True, True),  # a user becomes running
        (beat(), STORED | {"status": "unhealthy"}, False, True),  # back to active
        (beat(), STORED | {"status": "provisioning"}, False, True),
        (beat(), None, True, False),  # unknown worker: refused, writes nothing
        (beat(), STORED | {"status": "dead"}, True, False),  # refused too
        (beat(features=["cpu-weight"]), STORED, False, True),  # features changed
        (beat(features=["cpu-weight", "block-volumes", "nonsense"]), STORED, False, False),
        (beat(backups=[BackupReport(id="j1", state="running")]), STORED, False, True),
        (beat(resources=Resources(cpus=2, memory_mb=8192, disk_gb=80)), STORED, False, True),
        (beat(resources=Resources(cpus=4, memory_mb=4096, disk_gb=80)), STORED, False, True),
        # More than the control plane knows: flagged (an overclaim), under the lock.
        (beat(resources=Resources(cpus=8, memory_mb=8192, disk_gb=80)), STORED, False, True),
        # A server whose stored resources are not yet its trusted ones is written once.
        (beat(), STORED | {"memory_mb": 4096}, False, True),
    ],
)
def test_needs_lock(
    hb: Heartbeat, row: dict[str, Any] | None, becoming: bool, locked: bool
) -> None:
    assert needs_lock(hb, row, becoming) is locked  # type: ignore[arg-type]


def test_a_plain_row_writes_no_column_placement_reads() -> None:
    """The same heartbeat's two rows agree on what both write; the plain one leaves out
    features, CPUs and memory (servers.record_plain_heartbeats' column order)."""
    hb = beat(resources=Resources(cpus=4, memory_mb=8192, disk_gb=500))  # disk clamped to 80
    full = full_row(hb, "w1", 30.0, STORED, 100.0)  # type: ignore[arg-type]
    plain = plain_row(hb, "w1", 30.0, STORED, 100.0)  # type: ignore[arg-type]
    now, version, _features, applied, _cpus, _memory, disk, report, interval, _, wid = full
    assert plain == (now, version, applied, disk, report, interval, wid)
    assert disk == 80
