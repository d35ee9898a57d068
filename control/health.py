"""Whether an external provider can be used right now: `ProviderHealth`.

Contract: one `ProviderHealth` per external dependency and app, created with the app
(so readers never miss it): the cloud provider's under `appkeys.PROVIDER_HEALTH`
(updated only by control/capacity/providers/health.py's validation) and the DNS
provider's under `appkeys.DNS_HEALTH` (updated only by control/dns/sync.py's
verification). `state` is
- "validating" until the provider's check has succeeded: the first attempt, and then
  transient failures (5xx, 429, timeouts, connection errors) retried in the background
  with backoff; `detail` names the last failure;
- "ok" once it has succeeded: the provider may be used;
- "invalid" when the provider definitely refused the configuration: an operator must act.
/healthz, /readyz, the dashboard's data and /metrics read it; only "ok" is usable.

It lives in the foundation because both the capacity and the DNS subpackages keep one,
and neither may import the other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

ProviderState = Literal["ok", "validating", "invalid"]
PROVIDER_STATES: tuple[ProviderState, ...] = ("ok", "validating", "invalid")


@dataclass
class ProviderHealth:
    state: ProviderState = "validating"
    detail: str = "not validated yet"
    attempts: int = 0  # validation attempts so far
    since: float = field(default_factory=time.time)  # when `state` last changed
    next_attempt_at: float | None = None  # epoch seconds of the next validation attempt

    @property
    def usable(self) -> bool:
        return self.state == "ok"

    def update(
        self, state: ProviderState, detail: str, next_attempt_at: float | None = None
    ) -> None:
        if state != self.state:
            self.since = time.time()
        self.state = state
        self.detail = detail
        self.next_attempt_at = next_attempt_at

    def as_json(self) -> dict[str, object]:
        return {
            "state": self.state,
            "detail": self.detail,
            "attempts": self.attempts,
            "since": self.since,
            "next_attempt_at": self.next_attempt_at,
        }
