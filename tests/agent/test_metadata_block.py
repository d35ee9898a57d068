"""The metadata-block rule, checked in a network namespace the test creates (so the
host's own chains are not the subject), then on the host as the agent uses it."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest

from agent.metadata_block import CHAIN, RULE, MetadataBlock, rule_position


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"cf-test-{uuid.uuid4().hex[:8]}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        pytest.skip("cannot create a network namespace (needs root)")
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


def ipt(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "iptables", *args], capture_output=True, text=True
    )


async def test_creates_chain_jump_and_rule_idempotently(netns: str) -> None:
    block = MetadataBlock(["ip", "netns", "exec", netns, "iptables"])
    assert await block.present() is False
    await block.ensure()
    await block.ensure()
    assert await block.present() is True
    listing = ipt(netns, "-S", CHAIN).stdout
    assert listing.count("169.254.169.254") == 1
    assert ipt(netns, "-C", "FORWARD", "-j", CHAIN).returncode == 0


async def test_rule_moved_ahead_of_return(netns: str) -> None:
    ipt(netns, "-N", CHAIN)
    ipt(netns, "-A", CHAIN, "-j", "RETURN")
    ipt(netns, "-A", CHAIN, *RULE)  # shadowed: after the final RETURN
    block = MetadataBlock(["ip", "netns", "exec", netns, "iptables"])
    assert await block.present() is False
    await block.ensure()
    ours, ret = rule_position(ipt(netns, "-S", CHAIN).stdout)
    assert ours is not None and ret is not None and ours < ret
    assert ipt(netns, "-S", CHAIN).stdout.count("169.254.169.254") == 1


async def test_broken_iptables_is_reported_not_raised() -> None:
    block = MetadataBlock(["/nonexistent/iptables"])
    assert await block.present() is False
