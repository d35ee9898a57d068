"""The cluster firewall at Hetzner Cloud, through hcloud's firewalls client.

Contract:
- `HetznerFirewalls(token, endpoint, timeout)` holds its own hcloud client with the same
  settings and care as `HetznerProvider` (control/capacity/providers/hetzner.py): every
  call runs on a small thread pool under `asyncio.timeout(timeout)` and hcloud's own
  request timeout, hcloud's built-in retries are off (the sync's next round retries),
  the `RateBudget` response hook keeps the project's `RateLimit-*` figures and holds
  calls back after a 429, and every failure is a `ProviderError` built by
  control/capacity/providers/hetzner_errors.py (kind, code, status, correlation id; the
  token is never in a message).
- `find(selector)`: every firewall whose labels match (`Found`: id, rules, the label
  selectors it is applied to). `create(name, labels, rules, selector)` makes one,
  applied to `selector` in the same request. `set_rules`, `apply` (to a selector) and
  `delete` (removed from everything it is applied to first, as the API requires) change
  one. None waits for the actions it starts: the next round sees their effect, and a
  change meeting a running action gets a transient `conflict`/`locked`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import requests
from hcloud import Client
from hcloud.firewalls import (
    Firewall,
    FirewallResource,
    FirewallResourceLabelSelector,
    FirewallRule,
)

from control.capacity.providers import hetzner_calls
from control.capacity.providers.base import ProviderError
from control.capacity.providers.hetzner_ratelimit import RateBudget
from control.edge.firewall_rules import Found, Rule, rule_of

log = logging.getLogger(__name__)
T = TypeVar("T")


def _api_rule(rule: Rule) -> FirewallRule:
    return FirewallRule(
        direction=rule.direction,
        protocol=rule.protocol,
        port=rule.port,
        source_ips=list(rule.source_ips),
        destination_ips=[],
        description=rule.description,
    )


def _selector(selector: str) -> FirewallResource:
    return FirewallResource(
        type="label_selector", label_selector=FirewallResourceLabelSelector(selector=selector)
    )


def _found(model: Any) -> Found:
    rules = tuple(
        rule_of(
            {
                "direction": r.direction,
                "protocol": r.protocol,
                "port": r.port,
                "source_ips": r.source_ips,
                "description": r.description,
            }
        )
        for r in model.rules or []
    )
    selectors = tuple(
        str(entry.label_selector.selector)
        for entry in model.applied_to or []
        if entry.type == "label_selector" and entry.label_selector is not None
    )
    return Found(id=int(model.id), rules=rules, selectors=selectors)


class HetznerFirewalls:
    """Firewalls through hcloud (see the module docstring)."""

    def __init__(
        self, token: str, endpoint: str, timeout: float = 30.0, budget: RateBudget | None = None
    ) -> None:
        if not token:
            raise ProviderError("HETZNER_API_TOKEN is empty", kind="invalid")
        self.timeout = timeout
        self.budget = budget or RateBudget()
        self._closed = False
        self._client = Client(
            token=token,
            api_endpoint=endpoint.rstrip("/"),
            application_name="clawfleet",
            timeout=timeout,
        )
        base = self._client._client
        if not hasattr(base, "_retry_max_retries") or not hasattr(base, "_session"):
            raise RuntimeError("unsupported hcloud version: ClientBase internals changed")
        base._retry_max_retries = 0  # the sync's rounds retry, never a thread sleeping
        self._session: requests.Session = base._session
        self._session.hooks["response"].append(self.budget.observe)
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="hcloud-fw")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._session.close()

    async def find(self, selector: str) -> list[Found]:
        def get() -> list[Found]:
            found = self._client.firewalls.get_all(label_selector=selector)
            return [_found(f.data_model) for f in found]

        return await self._call(get, what="list firewalls")

    async def create(
        self, name: str, labels: dict[str, str], rules: Sequence[Rule], selector: str
    ) -> int:
        def create() -> int:
            response = self._client.firewalls.create(
                name=name,
                rules=[_api_rule(r) for r in rules],
                labels=labels,  # type: ignore[arg-type]  # hcloud annotates a dict as str
                resources=[_selector(selector)],
            )
            return int(response.firewall.data_model.id or 0)

        return await self._call(create, what=f"create firewall {name}")

    async def set_rules(self, firewall_id: int, rules: Sequence[Rule]) -> None:
        def set_rules() -> None:
            self._client.firewalls.set_rules(
                Firewall(id=firewall_id), [_api_rule(r) for r in rules]
            )

        await self._call(set_rules, what=f"set the rules of firewall {firewall_id}")

    async def apply(self, firewall_id: int, selector: str) -> None:
        def apply() -> None:
            self._client.firewalls.apply_to_resources(
                Firewall(id=firewall_id), [_selector(selector)]
            )

        await self._call(apply, what=f"apply firewall {firewall_id} to {selector}")

    async def delete(self, firewall_id: int) -> None:
        def delete() -> None:
            firewall = self._client.firewalls.get_by_id(firewall_id)
            applied = [
                FirewallResource(type=e.type, server=e.server, label_selector=e.label_selector)
                for e in firewall.data_model.applied_to or []
            ]
            if applied:
                self._client.firewalls.remove_from_resources(firewall, applied)
            self._client.firewalls.delete(firewall)

        try:
            await self._call(delete, what=f"delete firewall {firewall_id}")
        except ProviderError as exc:
            if exc.kind != "not_found":
                raise

    async def _call(self, fn: Callable[[], T], *, what: str) -> T:
        """Run a blocking hcloud call on the pool, bounded by `self.timeout`."""
        if self._closed:
            raise ProviderError("Hetzner firewall client is closed", kind="invalid")
        return await hetzner_calls.call(self.budget, self._executor, self.timeout, fn, what)
