"""Capacity trust: a worker is given users for what the control plane knows it has,
never for what it claims (docs/capacity.md, "Capacity you can trust").

Contract:
- The ceiling of a server is known before its agent ever speaks: for a server the
  autoscaler created, its server type's cores, memory and disk (recorded with the
  create, control/capacity/provisioning.py); for a joined server, what the operator stated when
  minting the join token. A value nobody stated (a join token without it, a server
  type without a disk size) is fixed by the claim at registration and can never be
  raised by a later claim.
- `trust` is pure: the capacity stored (and used by placement) is the claim clamped
  to the ceiling, since an honest worker may have less (the kernel keeps some
  memory); any value above the ceiling is an over-claim, described for the operator.
- An over-claim is recorded once (control/workers/servers.py `flag_overclaim`): the
  server's `overclaim` column, a `worker_overclaim` event, and a cordon, so placement
  gives it no more users until an operator has looked at it and uncordons it (which
  clears the flag).
"""

from __future__ import annotations

from dataclasses import dataclass

from control.db.store import Row

FIELDS = ("cpus", "memory_mb", "disk_gb")


@dataclass(frozen=True)
class Capacity:
    cpus: int
    memory_mb: int
    disk_gb: int


@dataclass(frozen=True)
class Stated:
    """What the control plane knows before the worker speaks; None: not stated."""

    cpus: int | None = None
    memory_mb: int | None = None
    disk_gb: int | None = None

    def ceiling(self, claim: Capacity) -> Capacity:
        """The ceiling at registration: stated values, the claim where none is stated."""
        return Capacity(
            *(
                stated if stated is not None else getattr(claim, name)
                for name, stated in zip(FIELDS, self.values(), strict=True)
            )
        )

    def values(self) -> tuple[int | None, int | None, int | None]:
        return self.cpus, self.memory_mb, self.disk_gb

    def unstated(self) -> list[str]:
        return [name for name, value in zip(FIELDS, self.values(), strict=True) if value is None]


# The columns `ceiling_of` reads.
CEILING_SQL = "known_cpus, known_memory_mb, known_disk_gb, cpus, memory_mb, disk_gb"


def ceiling_of(row: Row) -> Capacity:
    """A registered server's ceiling. A server registered before ceilings were kept is
    held to what it had then."""
    values = [
        row[f"known_{name}"] if row[f"known_{name}"] is not None else row[name] or 0
        for name in FIELDS
    ]
    return Capacity(*(int(v) for v in values))


def describe_source(source: str, stated: Stated) -> str:
    """Where a server's ceiling came from, as the server view shows it."""
    missing = stated.unstated()
    if not missing:
        return source
    if len(missing) == len(FIELDS):
        return "claimed at registration (nothing stated)"
    return f"{source}; {', '.join(missing)} as claimed at registration"


def trust(claim: Capacity, ceiling: Capacity) -> tuple[Capacity, str | None]:
    """(capacity to store, over-claim description or None)."""
    pairs = [(name, getattr(claim, name), getattr(ceiling, name)) for name in FIELDS]
    stored = Capacity(*(min(c, k) for _, c, k in pairs))
    over = [f"{name} {c} (has {k})" for name, c, k in pairs if c > k]
    return stored, (f"claims more than it has: {', '.join(over)}" if over else None)


def of_type(cpus: int, memory_mb: int, disk_gb: int) -> Stated:
    """A server type's resources; a type that gives no disk size (0) states none."""
    return Stated(cpus, memory_mb, disk_gb if disk_gb > 0 else None)
