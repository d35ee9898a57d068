"""Keep containers away from the cloud metadata service (169.254.169.254).

On Hetzner the metadata service hands the server's user data to anyone who asks,
containers included. Contract: `ensure()` makes sure, idempotently, that the
`DOCKER-USER` chain exists, that FORWARD jumps to it, and that it holds the rule
`-d 169.254.169.254/32 -j REJECT` before its first unconditional RETURN. The rule has
no interface match, so it covers docker0 and every per-user `br-*` bridge alike. The
iptables command is a configurable argv prefix (e.g. `ip netns exec NS iptables`), run
without a shell and with a timeout.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Sequence

from agent.errors import AgentError

CHAIN = "DOCKER-USER"
METADATA_IP = "169.254.169.254/32"
RULE = ("-d", METADATA_IP, "-j", "REJECT")


class MetadataBlockError(AgentError):
    """The metadata block rule could not be checked or put in place (iptables failed)."""

    code = "metadata_block_failed"


def _run(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(  # noqa: S603 - fixed argv, no shell
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MetadataBlockError(f"iptables: {exc}") from None


def rule_position(listing: str) -> tuple[int | None, int | None]:
    """(index of our rule, index of the first unconditional RETURN) in `iptables -S CHAIN`."""
    ours = ret = None
    index = 0
    for line in listing.splitlines():
        if not line.startswith(f"-A {CHAIN} "):
            continue
        body = line[len(f"-A {CHAIN} ") :].split()
        if ours is None and body[:2] == ["-d", METADATA_IP] and body[2:4] == ["-j", "REJECT"]:
            ours = index
        if ret is None and body == ["-j", "RETURN"]:
            ret = index
        index += 1
    return ours, ret


class MetadataBlock:
    def __init__(self, iptables: Sequence[str], *, timeout: float = 10.0) -> None:
        self._cmd = tuple(iptables)
        self._timeout = timeout
        self._lock = asyncio.Lock()

    def _ipt(self, *args: str) -> subprocess.CompletedProcess[str]:
        # -w waits for the xtables lock instead of failing while dockerd holds it.
        return _run([*self._cmd, "-w", "5", *args], self._timeout)

    def _ensure(self) -> None:
        if self._ipt("-S", CHAIN).returncode != 0:
            created = self._ipt("-N", CHAIN)
            if created.returncode != 0 and self._ipt("-S", CHAIN).returncode != 0:
                raise MetadataBlockError(f"cannot create chain {CHAIN}: {created.stderr.strip()}")
        if self._ipt("-C", "FORWARD", "-j", CHAIN).returncode != 0:
            jump = self._ipt("-I", "FORWARD", "1", "-j", CHAIN)
            if jump.returncode != 0:
                raise MetadataBlockError(f"cannot jump FORWARD to {CHAIN}: {jump.stderr.strip()}")
        listing = self._ipt("-S", CHAIN)
        if listing.returncode != 0:
            raise MetadataBlockError(f"cannot list {CHAIN}: {listing.stderr.strip()}")
        ours, ret = rule_position(listing.stdout)
        if ours is not None and (ret is None or ours < ret):
            return
        if ours is not None:
            # Present but shadowed by RETURN: move it to the top.
            self._ipt("-D", CHAIN, *RULE)
        inserted = self._ipt("-I", CHAIN, "1", *RULE)
        if inserted.returncode != 0:
            raise MetadataBlockError(f"cannot insert rule: {inserted.stderr.strip()}")

    def _present(self) -> bool:
        if self._ipt("-C", CHAIN, *RULE).returncode != 0:
            return False
        listing = self._ipt("-S", CHAIN)
        ours, ret = rule_position(listing.stdout)
        return ours is not None and (ret is None or ours < ret)

    async def ensure(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._ensure)

    async def present(self) -> bool:
        async with self._lock:
            try:
                return await asyncio.to_thread(self._present)
            except MetadataBlockError:
                return False
