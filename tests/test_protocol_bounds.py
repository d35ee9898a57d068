"""Every worker-protocol field has bounds, checked at the edge with a path-qualified 400,
and one heartbeat the store cannot take never fails the others in its batch."""

from __future__ import annotations

import asyncio
import copy
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from agent.client import ControlClient, ControlPlaneError
from agent.features import FEATURES
from control.appkeys import FLEET
from control.plans import Plan
from control.workers.auth import AgentCaller
from control.workers.specs import UserPlacement, build_spec
from shared import protocol, signing
from shared.protocol import (
    MAX_BACKUP_ERROR,
    MAX_BACKUPS,
    MAX_CONTAINERS,
    MAX_DEPTH,
    MAX_FEATURES,
    MAX_TEXT,
    MAX_VOLUME_ERROR,
    MAX_VOLUMES,
    ProtocolError,
)
from tests.fixtures import ControlPlane, free_port, make_settings
from tests.worker import FakeWorker

BIG = 2**63
REPORT = {
    "user_id": "alice",
    "state": "running",
    "health": "healthy",
    "image_id": "sha256:" + "0" * 64,
    "started_at": "2026-11-27T10:00:00.123456789Z",
    "restart_count": 0,
    "error": None,
}
VOLUME_REPORT = {"id": "102938", "state": "error", "error": "mount: wrong fs type"}
BACKUP_REPORT = {
    "id": "job-1",
    "state": "done",
    "snapshot_id": "4f1c" * 16,
    "bytes_added": 92160,
    "finished_at": 1796112000.5,
}
HEARTBEAT: dict[str, Any] = {
    "agent_version": "0.1.0",
    "applied_generation": 3,
    "resources": {
        "cpus": 4,
        "memory_mb": 8192,
        "disk_gb": 80,
        "memory_available_mb": 5000,
        "disk_free_gb": 61,
    },
    "containers": [REPORT],
    "host": {"docker_version": "26.1.5+dfsg1", "metadata_blocked": True},
    "volumes": [VOLUME_REPORT],
    "backups": [BACKUP_REPORT],
}
REGISTER: dict[str, Any] = {
    "protocol": 1,
    "agent_version": "0.1.0",
    "hostname": "worker-1.example.com",
    "resources": {"cpus": 4, "memory_mb": 8192, "disk_gb": 80},
}
SPEC: dict[str, Any] = {
    "user_id": "alice",
    "name": "clawfleet-alice",
    "image": "ghcr.io/openclaw/openclaw:2026.11.20",
    "user": "1000:1000",
    "command": None,
    "env": {"OPENCLAW_GATEWAY_TOKEN": "t" * 43},
    "ports": [{"container_port": 18789, "host_ip": "127.0.0.1"}],
    "volumes": [{"name": "clawfleet-alice-state", "target": "/home/node/.openclaw"}],
    "resources": {"memory_mb": 2048, "cpus": 1.0, "pids": 512},
    "health": {"path": "/healthz", "port": 18789},
    "labels": {"clawfleet.plan": "default", "clawfleet.subdomain": "alice"},
    "hostname": "alice",
    "route_host": "alice.agents.example.com",
    "spec_hash": "9c1f" * 16,
    "volume": {"id": "102938", "device": "/dev/disk/by-id/scsi-0HC_Volume_102938", "size_gb": 10},
}
BACKUP_JOB: dict[str, Any] = {
    "id": "job-1",
    "user_id": "alice",
    "kind": "restore",
    "volume_id": "102938",
    "repository": "s3:https://fsn1.your-objectstorage.com/bucket/prod/alice",
    "password": "p" * 43,
    "access_key": "AKIAEXAMPLE",
    "secret_key": "s" * 40,
    "snapshot_id": "4f1c2b3a",
    "tags": ["scheduled", "plan:default"],
    "keep_hourly": 24,
    "keep_daily": 7,
    "keep_weekly": 4,
}
ASSIGNMENTS: dict[str, Any] = {
    "generation": 4,
    "purge": ["bob"],
    "containers": [SPEC],
    "backups": [BACKUP_JOB],
}


def mutated(message: dict[str, Any], path: str, value: Any) -> bytes:
    """`message` with the field at dotted `path` (list indexes as numbers) set to `value`."""
    doc = copy.deepcopy(message)
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return json.dumps(doc).encode()


def nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


# (field path, bad value, fragment the 400 must name)
HEARTBEAT_CASES = [
    ("applied_generation", BIG, "$.applied_generation"),
    ("applied_generation", 2**64, "$.applied_generation"),
    ("applied_generation", -1, "$.applied_generation"),
    ("resources.cpus", BIG, "$.resources.cpus"),
    ("resources.cpus", 0, "$.resources.cpus"),
    ("resources.cpus", 4097, "$.resources.cpus"),
    ("resources.memory_mb", BIG, "$.resources.memory_mb"),
    ("resources.memory_mb", -1, "$.resources.memory_mb"),
    ("resources.disk_gb", 2**31 * 1024, "$.resources.disk_gb"),
    ("resources.memory_available_mb", BIG, "$.resources.memory_available_mb"),
    ("resources.disk_free_gb", -5, "$.resources.disk_free_gb"),
    ("containers.0.restart_count", 2**31, "$.containers[0].restart_count"),
    ("containers.0.restart_count", -1, "$.containers[0].restart_count"),
    ("containers.0.user_id", "alice\n", "$.containers[0].user_id"),
    ("containers.0.user_id", "../etc", "$.containers[0].user_id"),
    ("containers.0.user_id", "ålice", "$.containers[0].user_id"),
    ("containers.0.user_id", "", "$.containers[0].user_id"),
    ("containers.0.user_id", "a" * 64, "$.containers[0].user_id"),
    ("containers.0.state", "Running; rm", "$.containers[0].state"),
    ("containers.0.health", "x" * 33, "$.containers[0].health"),
    ("containers.0.image_id", "sha256: x", "$.containers[0].image_id"),
    ("containers.0.image_id", "x" * 256, "$.containers[0].image_id"),
    ("containers.0.started_at", "2026\n", "$.containers[0].started_at"),
    ("containers.0.error", "e" * (MAX_TEXT + 1), "$.containers[0].error"),
    ("containers", [REPORT] * (MAX_CONTAINERS + 1), "$.containers"),
    ("agent_version", "0.1.0\n", "$.agent_version"),
    ("agent_version", "v" * 65, "$.agent_version"),
    ("agent_version", "", "$.agent_version"),
    ("host.docker_version", "26.1.5 é", "$.host.docker_version"),
    ("extra", nested(MAX_DEPTH + 1), "nested deeper than"),
    ("volumes.0.id", "..", "$.volumes[0].id"),
    ("volumes.0.id", "v" * 65, "$.volumes[0].id"),
    ("volumes.0.id", "a/b", "$.volumes[0].id"),
    ("volumes.0.state", "unmounted", "$.volumes[0].state"),
    ("volumes.0.error", "e" * (MAX_VOLUME_ERROR + 1), "$.volumes[0].error"),
    ("volumes", [VOLUME_REPORT] * (MAX_VOLUMES + 1), "$.volumes"),
    ("backups", [BACKUP_REPORT] * (MAX_BACKUPS + 1), "$.backups"),
    ("backups.0.id", "Job-1", "$.backups[0].id"),
    ("backups.0.id", "j" * 41, "$.backups[0].id"),
    ("backups.0.id", "job-1\n", "$.backups[0].id"),
    ("backups.0.state", "pending", "$.backups[0].state"),
    ("backups.0.snapshot_id", "4F1C2B3A", "$.backups[0].snapshot_id"),
    ("backups.0.snapshot_id", "4f1c2b3", "$.backups[0].snapshot_id"),
    ("backups.0.snapshot_id", "4" * 65, "$.backups[0].snapshot_id"),
    ("backups.0.bytes_added", -1, "$.backups[0].bytes_added"),
    ("backups.0.bytes_added", BIG, "$.backups[0].bytes_added"),
    ("backups.0.finished_at", -1.0, "$.backups[0].finished_at"),
    ("backups.0.finished_at", 1e300, "$.backups[0].finished_at"),
    ("backups.0.error", "e" * (MAX_BACKUP_ERROR + 1), "$.backups[0].error"),
    ("features", ["f"] * 33, "$.features"),
    ("features", ["Block-Volumes"], "$.features[0]"),
    ("features", ["block_volumes"], "$.features[0]"),
    ("features", [""], "$.features[0]"),
    ("features", ["f" * 33], "$.features[0]"),
    ("features", ["block-volumes\n"], "$.features[0]"),
    ("features", "block-volumes", "$.features"),
]
REGISTER_CASES = [
    ("protocol", BIG, "$.protocol"),
    ("protocol", 0, "$.protocol"),
    ("hostname", "worker-1\n", "$.hostname"),
    ("hostname", "worker 1", "$.hostname"),
    ("hostname", "a" * 64, "$.hostname"),
    ("hostname", ("a" * 60 + ".") * 5, "$.hostname"),
    ("hostname", "wörker", "$.hostname"),
    ("hostname", "", "$.hostname"),
    ("resources.cpus", BIG, "$.resources.cpus"),
    ("resources.memory_mb", 2**64 + 1, "$.resources.memory_mb"),
    ("agent_version", "0.1.0;drop", "$.agent_version"),
    ("features", ["f"] * 33, "$.features"),
    ("features", ["cpu weight"], "$.features[0]"),
    ("features", [7], "$.features[0]"),
]
ASSIGNMENT_CASES = [
    ("generation", BIG, "$.generation"),
    ("purge", ["../../etc"], "$.purge[0]"),
    ("purge", ["bob"] * (MAX_CONTAINERS + 1), "$.purge"),
    ("containers", [SPEC] * (MAX_CONTAINERS + 1), "$.containers"),
    ("containers.0.user_id", "../alice", "$.containers[0].user_id"),
    ("containers.0.name", "clawfleet/alice", "$.containers[0].name"),
    ("containers.0.user", "1000:1000\n", "$.containers[0].user"),
    ("containers.0.image", "img with space", "$.containers[0].image"),
    ("containers.0.hostname", "alice\n", "$.containers[0].hostname"),
    ("containers.0.route_host", "a.com`) || Host(`evil.com", "$.containers[0].route_host"),
    ("containers.0.route_host", "alice.example.com\n", "$.containers[0].route_host"),
    ("containers.0.spec_hash", "zz", "$.containers[0].spec_hash"),
    ("containers.0.env", {f"V{i}": "x" for i in range(257)}, "$.containers[0].env"),
    ("containers.0.env", {"BAD NAME": "x"}, "$.containers[0].env"),
    ("containers.0.ports.0.container_port", 0, "$.containers[0].ports[0].container_port"),
    ("containers.0.ports.0.container_port", 65536, "$.containers[0].ports[0].container_port"),
    ("containers.0.volumes.0.name", "../x", "$.containers[0].volumes[0].name"),
    ("containers.0.volumes.0.target", "relative", "$.containers[0].volumes[0].target"),
    ("containers.0.resources.memory_mb", BIG, "$.containers[0].resources.memory_mb"),
    ("containers.0.resources.cpus", 4096.5, "$.containers[0].resources.cpus"),
    ("containers.0.resources.cpus", 0, "$.containers[0].resources.cpus"),
    ("containers.0.resources.pids", -1, "$.containers[0].resources.pids"),
    ("containers.0.health.path", "healthz", "$.containers[0].health.path"),
    ("containers.0.health.headers", {"X-A": "1\r\nX-B: 2"}, "$.containers[0].health.headers"),
    ("containers.0.health.headers", {"Bad Name": "1"}, "$.containers[0].health.headers"),
    ("containers.0.health.headers", {"X-A": "x" * 257}, "$.containers[0].health.headers"),
    ("containers.0.health.headers", {f"X-{i}": "1" for i in range(9)}, "$.containers[0].health"),
    ("containers.0.volume.id", "..", "$.containers[0].volume.id"),
    ("containers.0.volume.id", "1\n", "$.containers[0].volume.id"),
    ("containers.0.volume.device", "/dev/sda", "$.containers[0].volume.device"),
    ("containers.0.volume.device", "/dev/disk/by-id/x/../../sda", "$.containers[0].volume.device"),
    ("containers.0.volume.device", "/dev/disk/by-id/..", "$.containers[0].volume.device"),
    ("containers.0.volume.device", "loop:../x", "$.containers[0].volume.device"),
    ("containers.0.volume.device", "loop:", "$.containers[0].volume.device"),
    ("containers.0.volume.size_gb", 0, "$.containers[0].volume.size_gb"),
    ("containers.0.volume.size_gb", 10241, "$.containers[0].volume.size_gb"),
    ("backups", [BACKUP_JOB] * (MAX_BACKUPS + 1), "$.backups"),
    ("backups.0.id", "job_1", "$.backups[0].id"),
    ("backups.0.id", "", "$.backups[0].id"),
    ("backups.0.user_id", "../alice", "$.backups[0].user_id"),
    ("backups.0.kind", "delete", "$.backups[0].kind"),
    ("backups.0.volume_id", "..", "$.backups[0].volume_id"),
    ("backups.0.volume_id", "a/b", "$.backups[0].volume_id"),
    ("backups.0.repository", "/srv/restic/alice", "$.backups[0].repository"),
    ("backups.0.repository", "sftp:host:/alice", "$.backups[0].repository"),
    ("backups.0.repository", "s3:https://h/b a", "$.backups[0].repository"),
    ("backups.0.repository", "s3:https://h/" + "b" * 500, "$.backups[0].repository"),
    ("backups.0.password", "p" * 15, "$.backups[0].password"),
    ("backups.0.password", "p" * 129, "$.backups[0].password"),
    ("backups.0.password", "p" * 20 + "\n", "$.backups[0].password"),
    ("backups.0.password", "pässwörd" * 3, "$.backups[0].password"),
    ("backups.0.access_key", "a" * 129, "$.backups[0].access_key"),
    ("backups.0.access_key", "key with space", "$.backups[0].access_key"),
    ("backups.0.secret_key", "s" * 257, "$.backups[0].secret_key"),
    ("backups.0.secret_key", "s\x00", "$.backups[0].secret_key"),
    ("backups.0.snapshot_id", "latest", "$.backups[0].snapshot_id"),
    ("backups.0.snapshot_id", "4f1c", "$.backups[0].snapshot_id"),
    ("backups.0.snapshot_id", "4f1c2b3a\n", "$.backups[0].snapshot_id"),
    ("backups.0.tags", ["t"] * 9, "$.backups[0].tags"),
    ("backups.0.tags", ["a,b"], "$.backups[0].tags[0]"),
    ("backups.0.tags", [""], "$.backups[0].tags[0]"),
    ("backups.0.tags", ["t" * 65], "$.backups[0].tags[0]"),
    ("backups.0.keep_hourly", -1, "$.backups[0].keep_hourly"),
    ("backups.0.keep_daily", 1001, "$.backups[0].keep_daily"),
    ("backups.0.keep_weekly", BIG, "$.backups[0].keep_weekly"),
]


@pytest.mark.parametrize(("path", "value", "fragment"), HEARTBEAT_CASES)
def test_heartbeat_fields_are_bounded(path: str, value: Any, fragment: str) -> None:
    with pytest.raises(ProtocolError) as err:
        protocol.decode(mutated(HEARTBEAT, path, value), protocol.Heartbeat)
    assert fragment in str(err.value)


@pytest.mark.parametrize(("path", "value", "fragment"), REGISTER_CASES)
def test_registration_fields_are_bounded(path: str, value: Any, fragment: str) -> None:
    with pytest.raises(ProtocolError) as err:
        protocol.decode(mutated(REGISTER, path, value), protocol.RegisterRequest)
    assert fragment in str(err.value)


@pytest.mark.parametrize(("path", "value", "fragment"), ASSIGNMENT_CASES)
def test_what_the_agent_decodes_is_bounded_too(path: str, value: Any, fragment: str) -> None:
    with pytest.raises(ProtocolError) as err:
        protocol.decode(mutated(ASSIGNMENTS, path, value), protocol.Assignments)
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (HEARTBEAT, protocol.Heartbeat),
        (REGISTER, protocol.RegisterRequest),
        (ASSIGNMENTS, protocol.Assignments),
        ({**HEARTBEAT, "extra": nested(MAX_DEPTH - 2)}, protocol.Heartbeat),
        ({**HEARTBEAT, "containers": [REPORT] * MAX_CONTAINERS}, protocol.Heartbeat),
        ({**REGISTER, "hostname": ("a" * 62 + ".") * 3 + "b" * 61}, protocol.RegisterRequest),
        (
            mutated(ASSIGNMENTS, "containers.0.route_host", ""),
            protocol.Assignments,
        ),
        ({**HEARTBEAT, "volumes": [VOLUME_REPORT] * MAX_VOLUMES}, protocol.Heartbeat),
        (mutated(HEARTBEAT, "volumes.0", {"id": "v", "state": "mounted"}), protocol.Heartbeat),
        (mutated(ASSIGNMENTS, "containers.0.volume", None), protocol.Assignments),
        ({**ASSIGNMENTS, "backups": [BACKUP_JOB] * MAX_BACKUPS}, protocol.Assignments),
        ({**HEARTBEAT, "backups": [BACKUP_REPORT] * MAX_BACKUPS}, protocol.Heartbeat),
        ({**HEARTBEAT, "features": ["f" * 32] * MAX_FEATURES}, protocol.Heartbeat),
        ({**REGISTER, "features": ["x-9"] * MAX_FEATURES}, protocol.RegisterRequest),
        (mutated(HEARTBEAT, "backups.0", {"id": "j", "state": "running"}), protocol.Heartbeat),
        (mutated(ASSIGNMENTS, "backups.0.snapshot_id", ""), protocol.Assignments),
        (
            mutated(ASSIGNMENTS, "backups.0.repository", "s3:http://127.0.0.1:9000/b/a"),
            protocol.Assignments,
        ),
        (
            mutated(
                ASSIGNMENTS, "containers.0.volume", {"id": "a", "device": "loop:a", "size_gb": 1}
            ),
            protocol.Assignments,
        ),
    ],
)
def test_messages_within_bounds_decode(message: dict[str, Any] | bytes, kind: type[Any]) -> None:
    data = message if isinstance(message, bytes) else json.dumps(message).encode()
    protocol.decode(data, kind)


def test_old_peers_messages_decode_without_the_volume_fields() -> None:
    beat = {k: v for k, v in HEARTBEAT.items() if k != "volumes"}
    assert protocol.decode(json.dumps(beat).encode(), protocol.Heartbeat).volumes == []
    spec = {k: v for k, v in SPEC.items() if k != "volume"}
    old = protocol.decode(
        json.dumps({**ASSIGNMENTS, "containers": [spec]}).encode(), protocol.Assignments
    )
    assert old.containers[0].volume is None


def test_old_peers_messages_decode_without_the_backup_fields() -> None:
    beat = {k: v for k, v in HEARTBEAT.items() if k != "backups"}
    assert protocol.decode(json.dumps(beat).encode(), protocol.Heartbeat).backups == []
    assignments = {k: v for k, v in ASSIGNMENTS.items() if k != "backups"}
    assert protocol.decode(json.dumps(assignments).encode(), protocol.Assignments).backups == []
    job = {k: v for k, v in BACKUP_JOB.items() if not k.startswith(("keep_", "tags", "snap"))}
    decoded = protocol.decode(
        json.dumps({**ASSIGNMENTS, "backups": [job]}).encode(), protocol.Assignments
    ).backups[0]
    assert (decoded.snapshot_id, decoded.tags, decoded.keep_hourly, decoded.keep_weekly) == (
        "",
        [],
        0,
        0,
    )


def test_features_are_omitted_when_empty_and_default_to_none() -> None:
    """An old peer's messages (no `features`) decode as declaring none, and a message
    declaring none says nothing of them: an older control plane sees what it always did."""
    for message, kind in ((HEARTBEAT, protocol.Heartbeat), (REGISTER, protocol.RegisterRequest)):
        old = {k: v for k, v in message.items() if k != "features"}
        decoded = protocol.decode(json.dumps(old).encode(), kind)
        assert decoded.features == []
        assert "features" not in json.loads(protocol.encode(decoded))
        declared = msgspec.structs.replace(decoded, features=["block-volumes"])
        assert json.loads(protocol.encode(declared))["features"] == ["block-volumes"]


def test_the_agent_declares_exactly_the_features_the_protocol_names() -> None:
    """A name the control plane does not know would be dropped (never trusted); one it
    knows but this agent leaves out would keep users off an agent that can run them."""
    assert set(FEATURES) == protocol.FEATURES
    assert len(FEATURES) == len(set(FEATURES)) <= MAX_FEATURES
    protocol.decode(
        json.dumps({**REGISTER, "features": list(FEATURES)}).encode(), protocol.RegisterRequest
    )


def test_a_report_encodes_only_what_it_says() -> None:
    """omit_defaults: a running report is two fields, and decodes back the same."""
    report = protocol.BackupReport(id="job-1", state="running")
    assert json.loads(protocol.encode(report)) == {"id": "job-1", "state": "running"}
    assert protocol.decode(protocol.encode(report), protocol.BackupReport) == report


@pytest.mark.parametrize(
    ("data", "exceeds"),
    [
        (b"[]", False),
        (json.dumps(nested(MAX_DEPTH)).encode(), False),
        (json.dumps(nested(MAX_DEPTH + 1)).encode(), True),
        (b"[" * 40 + b"]" * 40, True),
        (b"[" * 32 + b"]" * 32, False),
        (b'["' + b"[" * 40 + b'"]', False),  # brackets inside a string are text
        (b'["\\"' + b"[" * 40 + b'"]', False),  # ...also after an escaped quote
        (b'["\\\\", ' + b"[" * 40 + b"]" * 40 + b"]", True),  # an escaped backslash ends no string
        (b"[" * 100, False),  # unbalanced: left to the decoder to describe
        (b"{}" * 1000, False),
    ],
)
def test_nesting_limit(data: bytes, exceeds: bool) -> None:
    assert protocol.nesting_exceeds(data) is exceeds


def test_a_megabyte_of_open_brackets_is_a_protocol_error() -> None:
    data = b'{"agent_version": "0.1.0", "x": ' + b"[" * (1024 * 1024 - 40)
    with pytest.raises(ProtocolError, match="nested deeper than"):
        protocol.decode(data, protocol.Heartbeat)


def test_agent_clips_long_errors_so_its_heartbeat_is_never_refused() -> None:
    beat = protocol.decode(json.dumps(HEARTBEAT).encode(), protocol.Heartbeat)
    report = msgspec.structs.replace(beat.containers[0], error="docker says " + "x" * 10_000)
    long = msgspec.structs.replace(beat, containers=[report, beat.containers[0]])
    with pytest.raises(ProtocolError, match="error"):
        protocol.decode(protocol.encode(long), protocol.Heartbeat)
    clipped = protocol.decode(protocol.encode(protocol.clip_errors(long)), protocol.Heartbeat)
    assert clipped.containers[0].error is not None
    assert clipped.containers[0].error.startswith("docker says x")
    assert len(clipped.containers[0].error) == MAX_TEXT
    assert clipped.containers[1] == beat.containers[0]
    assert protocol.clip_errors(beat) is beat


def test_agent_clips_long_volume_errors_too() -> None:
    beat = protocol.decode(json.dumps(HEARTBEAT).encode(), protocol.Heartbeat)
    report = msgspec.structs.replace(beat.volumes[0], error="mount says " + "x" * 1000)
    long = msgspec.structs.replace(beat, volumes=[report, beat.volumes[0]])
    with pytest.raises(ProtocolError, match="volumes"):
        protocol.decode(protocol.encode(long), protocol.Heartbeat)
    clipped = protocol.decode(protocol.encode(protocol.clip_errors(long)), protocol.Heartbeat)
    assert clipped.volumes[0].error.startswith("mount says x")
    assert len(clipped.volumes[0].error) == MAX_VOLUME_ERROR
    assert clipped.volumes[1] == beat.volumes[0]
    assert clipped.containers == beat.containers


def test_agent_clips_long_backup_errors_too() -> None:
    beat = protocol.decode(json.dumps(HEARTBEAT).encode(), protocol.Heartbeat)
    report = msgspec.structs.replace(beat.backups[0], state="failed", error="restic " + "x" * 999)
    long = msgspec.structs.replace(beat, backups=[report, beat.backups[0]])
    with pytest.raises(ProtocolError, match="backups"):
        protocol.decode(protocol.encode(long), protocol.Heartbeat)
    clipped = protocol.decode(protocol.encode(protocol.clip_errors(long)), protocol.Heartbeat)
    assert clipped.backups[0].error.startswith("restic x")
    assert len(clipped.backups[0].error) == MAX_BACKUP_ERROR
    assert clipped.backups[1] == beat.backups[0]


# --- at the edge: a 400 naming the field, and nothing written ----------------------------
async def token(control: ControlPlane) -> str:
    status, reply = await control.admin("POST", "/v1/join-tokens")
    assert status == 201, reply
    return str(reply["token"])


def snapshot(path: str) -> tuple[Any, ...]:
    """What an agent request can write (the autoscaler's start-up run may write other
    server columns meanwhile, such as `empty_since`)."""
    with sqlite3.connect(path, timeout=10) as db:
        return tuple(
            tuple(db.execute(sql).fetchall())
            for sql in (
                "SELECT id, status, hostname, agent_version, applied_generation, cpus, "
                "memory_mb, disk_gb, report, last_heartbeat, generation FROM servers ORDER BY id",
                "SELECT id, consumed_at FROM bootstrap_tokens ORDER BY id",
                "SELECT key_id, nonce FROM nonces ORDER BY key_id, nonce",
                "SELECT COUNT(*) FROM events WHERE server_id IS NOT NULL",
            )
        )


async def test_out_of_bounds_messages_are_400_naming_the_field_and_write_nothing(
    control_factory: Callable[..., ControlPlane],
) -> None:
    # One worker sends every case back to back: no pace (tests/test_agent_pace.py has it).
    control = control_factory(agent_calls_per_second=0)
    await control.start()
    tok = await token(control)
    worker = FakeWorker.with_token(control.url, control.session, await token(control))
    assert (await worker.register()).status == 201
    registrant = FakeWorker.with_token(control.url, control.session, tok)
    db = control.settings.database_path
    before = await asyncio.to_thread(snapshot, db)
    cases = [(worker, "heartbeat", HEARTBEAT, case) for case in HEARTBEAT_CASES]
    cases += [(registrant, "register", REGISTER, case) for case in REGISTER_CASES]
    for sender, endpoint, message, (path, value, fragment) in cases:
        body = mutated(message, path, value)
        reply = await sender.request("POST", f"/v1/agent/{endpoint}", raw_body=body)
        assert reply.status == 400, (endpoint, path, reply.body)
        assert reply.body["error"]["code"] == "malformed_body"
        assert fragment in reply.body["error"]["message"], (path, reply.body)
    assert await asyncio.to_thread(snapshot, db) == before
    # The token survived all of that and still registers.
    assert (await registrant.register("late")).status == 201


# --- one bad heartbeat never fails its batch ---------------------------------------------
def caller(worker: FakeWorker) -> AgentCaller:
    return AgentCaller(worker.key_id, signing.new_nonce(), int(time.time()), b"")


def beat(generation: int) -> protocol.Heartbeat:
    # Built directly, not decoded: this is how a value past the edge would look.
    return protocol.Heartbeat(
        agent_version="0.1.0",
        applied_generation=generation,
        resources=protocol.Resources(cpus=4, memory_mb=8192, disk_gb=80),
        containers=[],
        # As it registered (tests/worker.py): unchanged features bump no generation.
        features=list(FEATURES),
    )


def applied_generations(path: str) -> dict[str, int | None]:
    with sqlite3.connect(path, timeout=10) as db:
        return dict(db.execute("SELECT id, applied_generation FROM servers").fetchall())


async def test_a_heartbeat_whose_write_fails_fails_alone(control: ControlPlane) -> None:
    workers = []
    for i in range(6):
        w = FakeWorker.with_token(control.url, control.session, await token(control))
        assert (await w.register(f"w{i}")).status == 201
        workers.append(w)
    writer = control.app[FLEET].heartbeats
    poisoned = 3
    # Submitted in one tick: they are queued before the writer's task first runs, so they
    # share one transaction, which the poisoned one (SQLite refuses 2^63) makes fail.
    results = await asyncio.gather(
        *(
            writer.submit(caller(w), beat(BIG if i == poisoned else 7), 10.0)
            for i, w in enumerate(workers)
        ),
        return_exceptions=True,
    )
    assert isinstance(results[poisoned], OverflowError), results
    for i, result in enumerate(results):
        if i != poisoned:
            assert result == (1, []), (i, result)
    stored = await asyncio.to_thread(applied_generations, control.settings.database_path)
    for i, w in enumerate(workers):
        assert stored[w.key_id] == (None if i == poisoned else 7)
    # The others can keep going, and so can the writer.
    assert (await workers[0].heartbeat(generation=8)).status == 200


def test_every_spec_the_control_plane_builds_passes_the_agents_bounds(tmp_path: Path) -> None:
    """The longest names the control plane accepts, the largest plan: the worker can still
    decode its assignments (else it would be stuck on them)."""
    settings = make_settings(tmp_path)
    plan = Plan(name="p" * 32, memory_mb=1024 * 1024, cpus=256, pids=1_000_000, disk_gb=100_000)
    user = UserPlacement("u" * 63, "s" * 63, plan, {"OPENCLAW_GATEWAY_TOKEN": "t" * 43})
    spec = build_spec(user, settings, "srv-" + "w" * 32)
    message = protocol.Assignments(
        generation=protocol.GENERATION_MAX, containers=[spec] * MAX_CONTAINERS, purge=["u" * 63]
    )
    assert protocol.decode(protocol.encode(message), protocol.Assignments) == message


async def test_agent_survives_a_hostile_error_body() -> None:
    """A control plane (or whatever answers in its place) returns a deeply nested error:
    the agent sees a ControlPlaneError, never a RecursionError out of its loop."""

    async def hostile(request: web.Request) -> web.Response:
        body = b'{"error": {"code": "x", "message": "y"}, "z": ' + b"[" * 200_000
        return web.Response(status=500, body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/agent/heartbeat", hostile)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    client = ControlClient(f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(ControlPlaneError) as err:
            await client.heartbeat("srv-abcd1234", "s" * 43, beat(1))
        assert (err.value.status, err.value.code) == (500, "http_error")
    finally:
        await client.close()
        await runner.cleanup()
