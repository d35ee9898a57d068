"""The spec a worker receives names that worker and the cluster, so an agent can tell
its own Docker objects from another agent's on a shared engine."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from control.plans import DEFAULT_PLAN, PlanError, parse_plans
from control.settings import Settings
from control.workers.specs import UserPlacement, build_spec
from shared.protocol import to_builtins

SETTINGS = Settings(admin_token="a" * 32, internal_secret="b" * 32, cluster_name="prod")
ALICE = UserPlacement("alice", "alice", DEFAULT_PLAN, {"OPENCLAW_GATEWAY_TOKEN": "t"})


def test_spec_labels_carry_worker_and_cluster() -> None:
    spec = build_spec(ALICE, SETTINGS, "srv-abc")
    assert spec.labels["clawfleet.worker"] == "srv-abc"
    assert spec.labels["clawfleet.cluster"] == "prod"


def test_hash_is_stable_and_differs_per_worker_and_cluster() -> None:
    one = build_spec(ALICE, SETTINGS, "srv-abc")
    assert build_spec(ALICE, SETTINGS, "srv-abc").spec_hash == one.spec_hash
    assert build_spec(ALICE, SETTINGS, "srv-xyz").spec_hash != one.spec_hash
    staging = SETTINGS.with_overrides(cluster_name="staging")
    assert build_spec(ALICE, staging, "srv-abc").spec_hash != one.spec_hash


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, False),
        ({"cpu_limit": False}, False),
        ({"cpu_limit": True}, True),
        ({"cpu_limit": 1}, PlanError),
        ({"cpu_limit": "yes"}, PlanError),
    ],
)
def test_plan_cpu_limit_is_optional_and_strict(
    body: dict[str, object], expected: bool | type[PlanError]
) -> None:
    text = json.dumps({"p": {"memory_mb": 512, "cpus": 0.5, "pids": 64, "disk_gb": 1, **body}})
    if expected is PlanError:
        with pytest.raises(PlanError, match="cpu_limit must be true or false"):
            parse_plans(text)
    else:
        assert parse_plans(text)["p"].cpu_limit is expected


def test_cpu_limit_reaches_the_spec_and_leaves_older_hashes_alone() -> None:
    """Unset, the field is not encoded: a running container's spec hash is the one it had
    before the field existed, so an upgrade of the control plane replaces nothing."""
    spec = build_spec(ALICE, SETTINGS, "srv-abcd")
    assert "cpu_limit" not in to_builtins(spec.resources)
    capped = UserPlacement("alice", "alice", replace(DEFAULT_PLAN, cpu_limit=True), ALICE.env)
    hard = build_spec(capped, SETTINGS, "srv-abcd")
    assert hard.resources.cpu_limit is True and hard.spec_hash != spec.spec_hash
