"""Actions that run for a while and lock what they touch, for the fake's volume and firewall
endpoints (tests/fakes/hetzner_volumes.py, tests/fakes/hetzner_firewalls.py).

The real API answers 423 `locked` while an action runs on a resource; a test decides how
long that lasts with `fake.action_seconds`:
- 0 (the default): an action is over at once; it is returned `running` and reads `success`
  on its first poll, as the fake's server actions do. Nothing stays locked.
- N seconds: the action stays `running` (even when polled) and its resources stay locked
  for N seconds after it started.
- `math.inf`: until the test calls `fake.finish_actions()`: a lock window with no sleeps.

`busy(fake, "volume", 7)` says whether a running action names that resource. `settle(fake)`
marks the actions whose window has passed `success`; the plugins call it before every request.
"""

from __future__ import annotations

import time

from tests.fakes.hetzner import HetznerFake, Json, _now_iso


def start_action(fake: HetznerFake, command: str, resources: list[tuple[str, int]]) -> Json:
    """A new `running` action on `resources` ((type, id) pairs), kept in `fake.actions`."""
    action_id = next(fake._action_ids)  # the fake's own counter: ids stay unique across kinds
    action: Json = {
        "id": action_id,
        "command": command,
        "status": "running",
        "progress": 0,
        "started": _now_iso(),
        "finished": None,
        "resources": [{"id": id_, "type": kind} for kind, id_ in resources],
        "error": None,
    }
    fake.actions[action_id] = action
    fake.action_until[action_id] = time.time() + fake.action_seconds
    return action


def busy(fake: HetznerFake, kind: str, resource_id: int) -> bool:
    now = time.time()
    return any(
        fake.actions[action_id]["status"] == "running"
        and until > now
        and {"id": resource_id, "type": kind} in fake.actions[action_id]["resources"]
        for action_id, until in fake.action_until.items()
    )


def settle(fake: HetznerFake) -> None:
    """Ends the windowed actions whose time is up (they would have finished on their own)."""
    now = time.time()
    for action_id, until in fake.action_until.items():
        action = fake.actions.get(action_id)
        if action is not None and action["status"] == "running" and until <= now:
            action.update(status="success", progress=100, finished=_now_iso())
