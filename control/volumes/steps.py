"""What to do next with a user's volume: pure functions tested with parameter tables.

`next_step(volume, placement, holder)` decides one step from a snapshot:
- no volume yet and the user placed on a server: create it in that server's location;
- detached (or being attached) and the user placed in the volume's location: attach it
  to that server; placed in another location: wait (a cross-location move goes through
  a backup and a restore, not an attach);
- attached to the user's server and smaller than its plan's size (`Plan.volume_gb`): grow
  it there (a resize, which the agent follows by growing the mounted file system); a
  volume is never shrunk, so a smaller plan keeps the size it has;
- attached to another server than the user's: detach it once that server's agent no
  longer reports the user's container nor the mount, and at once (FORCED) when that
  server is dead or gone;
- the user cancelled (retention): detach it the same way and keep it; the user purged:
  detach, then delete it;
- anything else: nothing to do.
A user is never given a volume that is not attached to its server: the desired set
carries the volume only where it is attached (control/workers/assignments.py), and the
agent starts the container only once it reports the volume mounted.

`on_failure(kind, code, failures, retry_after)` says how long to wait after a failed
provider call and what the user is told meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shared.backoff import backoff_delay

VolumeState = Literal["creating", "detached", "attaching", "attached", "detaching", "deleting"]
StepKind = Literal["create", "attach", "detach", "delete", "resize", "wait", "none"]
RETRY_BASE = 5.0
RETRY_CAP = 300.0
PLACED = ("provisioning", "running")


@dataclass(frozen=True)
class Volume:
    state: VolumeState
    location: str
    server_id: str | None  # our server id it is (being) attached to
    size_gb: int = 0


@dataclass(frozen=True)
class Placement:
    user_state: str | None  # None: the user is purged (no row any more)
    server_id: str | None = None  # the server the user is placed on
    location: str | None = None  # that server's location
    server_ready: bool = True  # that server exists at the provider (create confirmed)
    size_gb: int = 0  # the size the user's plan asks for (`Plan.volume_gb`)


@dataclass(frozen=True)
class Holder:
    """The server the volume is attached to, as the control plane sees it."""

    alive: bool  # not dead, deleting nor deleted
    using: bool  # its agent still reports the user's container or the volume mounted


@dataclass(frozen=True)
class Step:
    kind: StepKind
    server_id: str | None = None  # attach: where to; detach: where from
    location: str | None = None  # create: where
    forced: bool = False  # detach: the holder is dead or gone, nothing waits for it
    size_gb: int | None = None  # resize: to this size
    reason: str = ""


NOTHING = Step("none")


def next_step(volume: Volume | None, placement: Placement, holder: Holder | None) -> Step:
    placed = placement.user_state in PLACED and placement.server_id is not None
    if volume is None:
        if not placed:
            return NOTHING
        if not placement.location:
            return Step("wait", reason=f"the location of {placement.server_id} is not known yet")
        return Step("create", location=placement.location)
    if volume.state == "creating":
        return Step("create", location=volume.location)
    if volume.state == "deleting":
        return Step("delete")
    if volume.server_id is not None and volume.state != "detached":
        return _attached(volume, placement, holder, placed)
    if placement.user_state is None:
        return Step("delete", reason="retention is over")
    if not placed:
        return NOTHING  # kept detached until the user is placed again
    return _attach(volume, placement)


def _attached(volume: Volume, placement: Placement, holder: Holder | None, placed: bool) -> Step:
    at = volume.server_id
    assert at is not None
    if placed and at == placement.server_id:
        if volume.state == "attaching":  # a call whose answer was lost: attach is idempotent
            return Step("attach", server_id=at)
        if volume.state == "detaching":  # came back to the server it was leaving
            return Step("detach", server_id=at, forced=holder is None or not holder.alive)
        if volume.size_gb < placement.size_gb:
            return Step("resize", server_id=at, size_gb=placement.size_gb)
        return NOTHING
    if placement.user_state == "suspended" and holder is not None and holder.alive:
        return NOTHING  # a suspended user keeps its server and its volume there
    if placement.user_state == "pending" and holder is not None and holder.alive:
        return NOTHING  # placement finds it a server; until then nothing moves
    if holder is None or not holder.alive:
        return Step("detach", server_id=at, forced=True, reason=f"{at} is dead or gone")
    if holder.using:
        return Step("wait", server_id=at, reason=f"waiting for the container on {at} to stop")
    return Step("detach", server_id=at)


def _attach(volume: Volume, placement: Placement) -> Step:
    target = placement.server_id
    if placement.location and placement.location != volume.location:
        return Step(
            "wait",
            reason=f"the volume is in {volume.location} but {target} is in "
            f"{placement.location}: a move across locations needs a backup and a restore",
        )
    if not placement.server_ready:
        return Step("wait", reason=f"{target} is not created at the provider yet")
    return Step("attach", server_id=target)


@dataclass(frozen=True)
class Failure:
    delay: float  # seconds before the next call for this volume
    message: str  # what the user is told (last_error)


def on_failure(
    kind: str, code: str, failures: int, retry_after: float | None, rand: float = 0.5
) -> Failure:
    """A failed volume call: the user waits with this message and the call is retried
    after the delay (`failures` counts this one). Nothing here ever gives up or
    creates a replacement: a volume that cannot be found is the operator's to restore."""
    delay = backoff_delay(max(0, failures - 1), base=RETRY_BASE, cap=RETRY_CAP, rand=rand)
    if kind == "rate_limited":
        return Failure(retry_after if retry_after is not None else 1.0, "provider rate limit")
    if code == "locked" or kind == "transient":
        return Failure(delay, f"provider busy or unreachable ({code or kind}); retrying")
    if kind == "limit":
        return Failure(delay, "the server has the most volumes it can attach (16); retrying")
    if code == "location_mismatch":
        return Failure(RETRY_CAP, "the volume and the server are in different locations")
    if kind == "not_found":
        return Failure(
            RETRY_CAP, "the volume or its server was not found at the provider: restore needed"
        )
    return Failure(RETRY_CAP, f"the provider refused ({code or kind}); the operator must act")
