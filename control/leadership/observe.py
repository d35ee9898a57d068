"""Leadership as Prometheus sees it: `clawfleet_leader` (1 while this replica runs the
singletons, else 0) and `clawfleet_leader_epoch` (the epoch of the lease as this replica
last saw it: a change is a failover). Read at scrape time, never stale."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from control.leadership.leadership import Leadership


def install_gauges(registry: CollectorRegistry, leadership: Leadership) -> None:
    leading = Gauge(
        "clawfleet_leader",
        "1 while this replica holds the lease and runs the singletons, else 0.",
        registry=registry,
    )
    leading.set_function(lambda: 1.0 if leadership.term is not None else 0.0)
    epoch = Gauge(
        "clawfleet_leader_epoch",
        "Epoch of the singletons' lease as this replica last saw it (changes on failover).",
        registry=registry,
    )
    epoch.set_function(lambda: float(leadership.status()["epoch"] or 0))
