"""The OpenClaw image's tag is a pure function of its inputs: any input changing changes
it, nothing else does; the pins must agree with each other before anything is built."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from tenant.openclaw import build

INPUTS = build.read_inputs()
VERSIONS = build.parse_versions(INPUTS["versions.toml"].decode())


@pytest.mark.parametrize("name", build.INPUTS)
def test_every_input_changes_the_digest(name: str) -> None:
    changed = dict(INPUTS, **{name: INPUTS[name] + b"\n"})
    assert build.input_digest(changed) != build.input_digest(INPUTS)


def test_digest_ignores_mapping_order() -> None:
    assert build.input_digest(dict(reversed(INPUTS.items()))) == build.input_digest(INPUTS)


def test_tag_names_version_and_digest_prefix() -> None:
    digest = build.input_digest(INPUTS)
    tag = build.image_tag(VERSIONS.openclaw, digest)
    assert tag == f"clawfleet-openclaw:{VERSIONS.openclaw}-{digest[:12]}"
    assert build.current_tag() == tag


@pytest.mark.parametrize(
    ("change", "same_base"),
    [
        ({"openclaw": "2099.1.1"}, True),
        ({"node_version": "24.99.0"}, True),
        ({"debian_suite": "trixie"}, False),
        ({"debian_mirror": "http://mirror.example/debian"}, False),
        ({"debian_packages": ("ca-certificates",)}, False),
    ],
)
def test_base_image_depends_only_on_debian_pins(change: dict[str, object], same_base: bool) -> None:
    changed = replace(VERSIONS, **change)
    assert (build.base_tag(changed) == build.base_tag(VERSIONS)) is same_base


def test_committed_pins_agree() -> None:
    build.check_consistent(VERSIONS, INPUTS)


@pytest.mark.parametrize("where", ["package.json", "package-lock.json", "versions.toml"])
def test_disagreeing_openclaw_pins_are_refused(where: str) -> None:
    inputs = dict(INPUTS)
    versions = VERSIONS
    if where == "versions.toml":
        versions = replace(VERSIONS, openclaw="2099.1.1")
    elif where == "package.json":
        package = json.loads(inputs[where])
        package["dependencies"]["openclaw"] = "2099.1.1"
        inputs[where] = json.dumps(package).encode()
    else:
        lock = json.loads(inputs[where])
        lock["packages"]["node_modules/openclaw"]["version"] = "2099.1.1"
        inputs[where] = json.dumps(lock).encode()
    with pytest.raises(build.BuildError, match="relock"):
        build.check_consistent(versions, inputs)


def test_wheel_must_be_the_pinned_node() -> None:
    versions = replace(VERSIONS, node_version="24.20.0")
    with pytest.raises(build.BuildError, match=r"not Node 24\.20\.0"):
        build.check_consistent(versions, INPUTS)
