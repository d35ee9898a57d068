"""The commands behind block volumes, and how they fail.

Contract: `run` runs a command as a subprocess with stdin closed and an explicit timeout
(killed when it passes), off the event loop; `checked` also refuses a non-zero status.
Failures are `VolumeError` (`state` "error") or `VolumeMissing` (`state` "missing"), with
a one-line message fit for the user's error field: no control characters, at most
MAX_VOLUME_ERROR characters, never a secret (none is involved).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from agent.errors import AgentError
from shared.protocol import MAX_VOLUME_ERROR, VolumeState


class VolumeError(AgentError):
    """The volume exists but cannot be attached, checked or mounted."""

    code = "volume_error"
    state: VolumeState = "error"

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class VolumeMissing(VolumeError):
    """The volume's device is not on this worker (not attached yet, or gone)."""

    code = "volume_missing"
    state: VolumeState = "missing"


def one_line(text: str, limit: int = MAX_VOLUME_ERROR) -> str:
    """`text` as one printable line of at most `limit` characters (a command's stderr
    goes into the user's error field)."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str


async def run(argv: Sequence[str], limit: float) -> Result:
    """Runs a command with stdin closed; kills it when `limit` seconds pass."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        raise VolumeError(f"{argv[0]} is not installed on this worker") from None
    try:
        async with asyncio.timeout(limit):  # not wait_for: see agent/runtime.py `_call`
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise VolumeError(f"{argv[0]} did not finish within {limit:g}s") from None
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


async def checked(argv: Sequence[str], limit: float, what: str) -> str:
    result = await run(argv, limit)
    if result.rc != 0:
        raise VolumeError(f"{what} failed: {result.err.strip() or f'status {result.rc}'}")
    return result.out
