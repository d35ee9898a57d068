"""How workers keep in touch: the heartbeat interval, how long silence may last before a
worker is dead, and how often one worker may call at all (control/api/agent_pace.py);
and how long the singletons' leader keeps its lease (control/leadership/).

Contract: `LivenessSettings` is a frozen, keyword-only dataclass that `Settings`
inherits (like BackupSettings: the settings module has no room left under the 400-line
rule). `rules.check` compares DEAD_AFTER with HEARTBEAT_INTERVAL.
"""

from __future__ import annotations

from dataclasses import dataclass

from control.settings.rules import DAY
from shared.config import number, setting


@dataclass(frozen=True, kw_only=True)
class LivenessSettings:
    heartbeat_interval: float = setting(
        "HEARTBEAT_INTERVAL", "10", number(1, 3600), "Base seconds between worker heartbeats."
    )
    agent_calls_per_second: float = setting(
        "AGENT_CALLS_PER_SECOND",
        "2",
        number(0, 1000),
        "Most heartbeats per second one worker may send after a burst of 10 (its polls: twice that); more get a 429. A real agent sends at most one a second. 0 turns the limit off (benchmarks).",
    )
    leader_lease_ttl: float = setting(
        "LEADER_LEASE_TTL",
        "15",
        number(3, 600),
        "Seconds the singletons' lease lasts without renewal (renewed every third of it): how long replicas sharing a database wait to replace a leader that died (docs/production.md).",
    )
    dead_after: float = setting(
        "DEAD_AFTER",
        "300",
        number(10, 30 * DAY),
        "Seconds without a heartbeat before a worker is declared dead.",
    )
