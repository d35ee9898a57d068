"""Which objects an agent owns and which specs it accepts: pure decisions, as tables."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import msgspec
import pytest

from agent.docker_objects import Observed
from agent.ownership import (
    LABEL_CLUSTER,
    LABEL_WORKER,
    Owner,
    claims,
    legacy_container_ok,
    legacy_network_ok,
    legacy_volume_ok,
    refusal,
)
from agent.reconcile_view import owned_containers, view_of
from agent.state import Credentials, StateStore
from shared.protocol import (
    ConfigFileSpec,
    ContainerSpec,
    HealthSpec,
    PortSpec,
    SecretFileSpec,
    VolumeSpec,
)
from tests.agent.specs import make_spec

ME = Owner("srv-me", "prod", frozenset({"srv-before"}))
MANAGED = {"clawfleet.managed": "true", "clawfleet.user": "alice"}


@pytest.mark.parametrize(
    ("labels", "legacy_ok", "owned"),
    [
        pytest.param({**MANAGED, LABEL_WORKER: "srv-me"}, False, True, id="mine-no-cluster"),
        pytest.param(
            {**MANAGED, LABEL_WORKER: "srv-me", LABEL_CLUSTER: "prod"}, False, True, id="mine"
        ),
        pytest.param(
            {**MANAGED, LABEL_WORKER: "srv-me", LABEL_CLUSTER: "staging"},
            True,
            False,
            id="my-id-other-cluster",
        ),
        pytest.param(
            {**MANAGED, LABEL_WORKER: "srv-other", LABEL_CLUSTER: "prod"},
            True,
            False,
            id="other-worker",
        ),
        pytest.param(
            {**MANAGED, LABEL_WORKER: "srv-before", LABEL_CLUSTER: "prod"},
            False,
            True,
            id="my-previous-id",
        ),
        pytest.param({**MANAGED, LABEL_WORKER: "srv-me-2"}, True, False, id="prefix-is-not-mine"),
        pytest.param(MANAGED, True, True, id="legacy-adopted"),
        pytest.param(MANAGED, False, False, id="legacy-not-named"),
        pytest.param({**MANAGED, LABEL_WORKER: ""}, False, False, id="empty-worker-is-legacy"),
        pytest.param(
            {"clawfleet.user": "alice", LABEL_WORKER: "srv-me"}, True, False, id="unmanaged"
        ),
        pytest.param(
            {**MANAGED, "clawfleet.managed": "True", LABEL_WORKER: "srv-me"},
            True,
            False,
            id="managed-must-be-exactly-true",
        ),
    ],
)
def test_claims(labels: dict[str, str], legacy_ok: bool, owned: bool) -> None:
    assert claims(ME, labels, legacy_ok=legacy_ok) is owned


def test_unknown_cluster_leaves_the_worker_id_to_decide() -> None:
    owner = Owner("srv-me")
    assert claims(owner, {**MANAGED, LABEL_WORKER: "srv-me", LABEL_CLUSTER: "x"}, legacy_ok=False)
    assert not claims(owner, {**MANAGED, LABEL_WORKER: "srv-x"}, legacy_ok=True)


ALICE = make_spec("alice", "img:1")
SPECS = {"alice": ALICE}


@pytest.mark.parametrize(
    ("name", "user", "ok"),
    [
        ("clawfleet-alice", "alice", True),
        ("clawfleet-alice-prev-0123456789ab", "alice", True),
        ("clawfleet-alice", "bob", False),  # bob is not desired
        ("clawfleet-alice2", "alice", False),
        ("other-alice", "alice", False),
    ],
)
def test_legacy_container_adopted_only_by_name_of_a_desired_user(
    name: str, user: str, ok: bool
) -> None:
    assert legacy_container_ok(name, user, SPECS) is ok


def test_legacy_networks_and_volumes() -> None:
    assert legacy_network_ok("clawfleet-alice", "alice", SPECS)
    assert not legacy_network_ok("clawfleet-alice", "bob", SPECS)
    assert not legacy_network_ok("other", "alice", SPECS)
    assert legacy_volume_ok("clawfleet-alice-state", "alice", SPECS, ())
    assert not legacy_volume_ok("clawfleet-alice-config", "alice", SPECS, ())
    assert legacy_volume_ok("clawfleet-bob-state", "bob", SPECS, {"bob"})
    assert not legacy_volume_ok("clawfleet-bob-state", "bob", SPECS, ())
    assert not legacy_volume_ok("other-bob", "bob", SPECS, {"bob"})


def with_(spec: ContainerSpec, **changes: object) -> ContainerSpec:
    return msgspec.structs.replace(spec, **changes)


OK_LABELS = {**ALICE.labels, LABEL_WORKER: "srv-me", LABEL_CLUSTER: "prod"}


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        pytest.param(ALICE, None, id="plain"),
        pytest.param(with_(ALICE, labels=OK_LABELS), None, id="own-labels"),
        pytest.param(with_(ALICE, user="0:0"), "user", id="root"),
        pytest.param(with_(ALICE, user="00:00"), "user", id="root-zero-padded"),
        pytest.param(with_(ALICE, user="00"), "user", id="root-short"),
        pytest.param(with_(ALICE, user="1000:0"), "user", id="root-group"),
        pytest.param(with_(ALICE, user="1000"), "user", id="uid-alone"),
        pytest.param(with_(ALICE, user="node"), "user", id="name"),
        pytest.param(with_(ALICE, user_id="../alice"), "user_id", id="path-user"),
        pytest.param(with_(ALICE, user_id="alice\n"), "user_id", id="newline-user"),
        pytest.param(with_(ALICE, name="clawfleet alice"), "name", id="space-name"),
        pytest.param(with_(ALICE, image="img:1\n"), "image", id="newline-image"),
        pytest.param(with_(ALICE, image="-v /:/host img"), "image", id="flag-image"),
        pytest.param(with_(ALICE, hostname="alice\n"), "hostname", id="newline-hostname"),
        pytest.param(with_(ALICE, route_host="a.example.com\n"), "route_host", id="nl-host"),
        pytest.param(with_(ALICE, route_host="a`) || Host(`b"), "route_host", id="rule-inject"),
        pytest.param(with_(ALICE, env={"A=B": "x"}), "env", id="env-name"),
        pytest.param(with_(ALICE, ports=[PortSpec(0)]), "ports", id="port-0"),
        pytest.param(
            with_(ALICE, ports=[PortSpec(80, "0.0.0.0")]),  # noqa: S104 - it is refused
            "ports",
            id="public-port",
        ),
        pytest.param(with_(ALICE, health=HealthSpec("/h z", 80)), "health", id="health-path"),
        pytest.param(
            with_(ALICE, volumes=[VolumeSpec("clawfleet-bob-state", "/data")]),
            "volumes",
            id="other-users-volume",
        ),
        pytest.param(
            with_(ALICE, volumes=[VolumeSpec("clawfleet-alice-state", "/data/../etc")]),
            "volumes",
            id="dotdot-target",
        ),
        pytest.param(
            with_(ALICE, secret_files=[SecretFileSpec("clawfleet-bob-state", "k", "v")]),
            "files",
            id="secret-in-other-volume",
        ),
        pytest.param(
            with_(ALICE, config_files=[ConfigFileSpec("clawfleet-alice-x", "c.json", "{}", "{}")]),
            "files",
            id="config-in-unmounted-volume",
        ),
        pytest.param(
            with_(ALICE, config_files=[ConfigFileSpec(ALICE.volumes[0].name, "./c", "{}", "{}")]),
            "files",
            id="dot-config-path",
        ),
        pytest.param(
            with_(ALICE, secret_files=[SecretFileSpec(ALICE.volumes[0].name, "s/k", "v")]),
            None,
            id="secret-in-own-volume",
        ),
        pytest.param(
            with_(ALICE, labels={**ALICE.labels, "clawfleet.managed": "false"}),
            "labels",
            id="reserved-label",
        ),
        pytest.param(
            with_(ALICE, labels={**ALICE.labels, "x": "a\nb"}), "labels", id="newline-label"
        ),
        pytest.param(
            with_(ALICE, labels={**OK_LABELS, LABEL_WORKER: "srv-other"}),
            "worker",
            id="other-workers-spec",
        ),
        pytest.param(
            with_(ALICE, labels={**OK_LABELS, LABEL_CLUSTER: "staging"}),
            "cluster",
            id="other-cluster",
        ),
    ],
)
def test_refusal(spec: ContainerSpec, why: str | None) -> None:
    reason = refusal(spec, ME)
    if why is None:
        assert reason is None
    else:
        assert reason is not None and why in reason


def test_view_takes_the_cluster_from_the_specs_and_refuses_a_mixed_set() -> None:
    a = with_(ALICE, labels={**ALICE.labels, LABEL_CLUSTER: "prod"})
    b = make_spec("bob", "img:1")
    view = view_of({"alice": a, "bob": b}, Owner("srv-me"))
    assert view.owner.cluster == "prod" and set(view.accepted) == {"alice", "bob"}
    c = with_(b, labels={**b.labels, LABEL_CLUSTER: "staging"})
    mixed = view_of({"alice": a, "bob": c}, Owner("srv-me"))
    assert mixed.accepted == {} and set(mixed.refused) == {"alice", "bob"}
    assert "several clusters" in mixed.refused["alice"]


def observed(cid: str, name: str, user: str, labels: dict[str, str]) -> Observed:
    return Observed(cid, name, user, "h", "img", "sha", "running", "", 0, labels=labels)


def test_owned_containers_drops_others_and_marks_legacy_for_replacement() -> None:
    mine = observed("c1", "clawfleet-alice", "alice", {**MANAGED, LABEL_WORKER: "srv-me"})
    theirs = observed("c2", "clawfleet-alice", "alice", {**MANAGED, LABEL_WORKER: "srv-x"})
    legacy = observed("c3", "clawfleet-alice", "alice", MANAGED)
    stray = observed("c4", "clawfleet-carol", "carol", {**MANAGED, "clawfleet.user": "carol"})
    view = view_of(SPECS, Owner("srv-me"))
    got = owned_containers([mine, theirs, legacy, stray], view)
    assert got == [mine, replace(legacy, spec_hash="")]


def test_credentials_keep_previous_ids_and_read_older_files(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save_credentials(Credentials("srv-b", "s", ("srv-a",)))
    assert store.load_credentials() == Credentials("srv-b", "s", ("srv-a",))
    (tmp_path / "credentials.json").write_text('{"worker_id": "srv-a", "secret": "s"}')
    assert store.load_credentials() == Credentials("srv-a", "s", ())
