"""control/app.py's lifecycle: each resource is up under its key once the app runs, and
shutdown leaves no background task running; the provider's price lookup treats only a
provider's refusal as an unknown price."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

import pytest

from control import app as app_module
from control.appkeys import (
    DNS_SYNC,
    FLEET,
    INBOX,
    PROVIDER,
    SCALER,
    SCHEDULER,
    STORE,
)
from control.capacity.providers.base import ProviderError, ServerType, hourly_price_lookup
from control.capacity.providers.local import LocalProvider
from tests.fixtures import ControlPlane

BACKGROUND = {"liveness-sweeps", "stripe-inbox", "dns-verification", "provider-validation"}


async def test_every_resource_runs_and_shutdown_leaves_no_task(control: ControlPlane) -> None:
    app = control.app
    assert app is not None
    for key in (STORE, PROVIDER, DNS_SYNC, FLEET, SCALER, INBOX):
        assert key in app, key
    assert app[SCHEDULER].running
    store = app[STORE]
    await control.stop()
    running = {t.get_name() for t in asyncio.all_tasks() if not t.done()}
    assert not running & BACKGROUND
    assert not app[SCHEDULER].running
    with pytest.raises(RuntimeError):  # closed, not merely idle
        await store.fetch_one("SELECT 1")


async def test_periodic_jobs_are_scheduled_and_pruning_waits_its_interval(
    control: ControlPlane,
) -> None:
    app = control.app
    assert app is not None
    jobs = {job.id: job for job in app[SCHEDULER].get_jobs()}
    assert {"autoscale", "dns", "stripe-prune"} <= set(jobs)
    now = datetime.now(jobs["stripe-prune"].next_run_time.tzinfo)
    # Pruning's first run is one interval away, so a short-lived process never has it
    # cancelled at shutdown.
    wait = (jobs["stripe-prune"].next_run_time - now).total_seconds()
    assert app_module.STRIPE_PRUNE_INTERVAL - 60 < wait <= app_module.STRIPE_PRUNE_INTERVAL


class _Catalog(LocalProvider):
    def __init__(self, fails: Callable[[str], None]) -> None:
        super().__init__("/nonexistent")
        self._fails = fails

    def server_type(self, name: str) -> ServerType:
        self._fails(name)
        return ServerType(name=name, cpus=2, memory_mb=4096, disk_gb=40, hourly_price=0.01)


def _refuse(name: str) -> None:
    raise ProviderError(f"unknown server type {name!r}", kind="invalid")


def _bug(name: str) -> None:
    raise ZeroDivisionError(name)


@pytest.mark.parametrize(
    ("fails", "server_type", "price"),
    [
        (lambda name: None, "cx22", 0.01),
        (lambda name: None, None, None),  # no type recorded: no price
        (_refuse, "cx99", None),  # the provider no longer lists it
    ],
)
def test_price_lookup(
    fails: Callable[[str], None], server_type: str | None, price: float | None
) -> None:
    assert hourly_price_lookup(_Catalog(fails))(server_type) == price


def test_price_lookup_does_not_hide_a_bug() -> None:
    with pytest.raises(ZeroDivisionError):
        hourly_price_lookup(_Catalog(_bug))("cx22")
