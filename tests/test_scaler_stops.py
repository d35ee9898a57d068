"""An autoscaler run ends at a step the database refuses (control/capacity/scaler.py):
a replica whose lease is gone, or a store that is down, must not go on to steps that
call the provider for work it could not record. Other failures stay one step's."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from control.capacity.providers.base import ProviderError
from control.capacity.provisioning import Provisioner, ScalerState
from control.capacity.scaler import Scaler, Step
from control.db.store import StoreUnavailable
from control.leadership.fencing import NotLeader


class TwoSteps(Scaler):
    """A scaler whose run is a failing step and then a step that records it ran."""

    def __init__(self, failure: Exception) -> None:
        super().__init__(cast(Provisioner, SimpleNamespace(state=ScalerState())))
        self.failure = failure
        self.after: list[str] = []

    def _steps(self) -> list[Step]:
        async def failing(_: Any) -> None:
            raise self.failure

        async def later(_: Any) -> None:
            self.after.append("ran")

        return [failing, later]


@pytest.mark.parametrize(
    ("failure", "later_runs"),
    [
        (NotLeader("this replica no longer holds the lease"), False),
        (StoreUnavailable("the database cannot be used: disk I/O error"), False),
        (ProviderError("rate limited", kind="rate_limited"), True),
        (RuntimeError("a bug in one step"), True),
    ],
    ids=["not-leader", "store-down", "provider-error", "other-error"],
)
async def test_a_refused_write_ends_the_run(failure: Exception, later_runs: bool) -> None:
    scaler = TwoSteps(failure)
    await scaler.run(scheduled=False)  # never raises
    assert scaler.after == (["ran"] if later_runs else [])
