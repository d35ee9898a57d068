"""Where a user's container goes: a pure decision over a snapshot of server room.

Until the capacity work lands, the rule is: among servers that accept work (active,
not cordoned, not draining), the one with the most free memory that still fits the
plan; ties go to the lower id so the choice is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Room:
    server_id: str
    accepts_work: bool
    memory_total_mb: int
    memory_used_mb: int

    @property
    def memory_free_mb(self) -> int:
        return self.memory_total_mb - self.memory_used_mb


def choose_server(rooms: list[Room], memory_mb: int) -> str | None:
    best: Room | None = None
    for room in rooms:
        if not room.accepts_work or room.memory_free_mb < memory_mb:
            continue
        if best is None or (room.memory_free_mb, best.server_id) > (
            best.memory_free_mb,
            room.server_id,
        ):
            best = room
    return best.server_id if best else None
