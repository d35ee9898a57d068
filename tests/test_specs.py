"""The spec a worker receives names that worker and the cluster, so an agent can tell
its own Docker objects from another agent's on a shared engine."""

from __future__ import annotations

from control.plans import DEFAULT_PLAN
from control.settings import Settings
from control.workers.specs import UserPlacement, build_spec

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
