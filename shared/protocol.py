"""Wire messages of the worker protocol, version 1 (docs/protocol.md).

Decoding is strict about types (an int field refuses "3" and true) and about bounds,
and tolerant of unknown fields, so a newer agent can talk to an older control plane.
Every field has bounds declared here with msgspec `Meta` constraints: integers have a
range (no value near 2^63 ever reaches SQLite), strings a maximum length and, where
they become identifiers (user ids, host names, container and volume names, Traefik
hosts), a full-match character class (`\\A...\\Z`: a trailing newline never passes),
lists a maximum length, and a message at most `MAX_DEPTH` levels of nesting, unknown
fields included. `decode` turns every shape or bound error into `ProtocolError` with
a path-qualified message ("... - at `$.resources.cpus`"). `decode`, `encode`,
`to_builtins`, `ProtocolError` and `MAX_DEPTH` live in shared/codec.py and are
re-exported here, where both programs import them from.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from shared.codec import MAX_DEPTH as MAX_DEPTH
from shared.codec import ProtocolError as ProtocolError
from shared.codec import decode as decode
from shared.codec import encode as encode
from shared.codec import nesting_exceeds as nesting_exceeds
from shared.codec import to_builtins as to_builtins

MAX_CONTAINERS = 1000
MAX_TEXT = 2048  # free text: error messages
GENERATION_MAX = 2**53 - 1  # counters stay exact in every JSON implementation

USER_ID_PATTERN = r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z"
WORKER_ID_PATTERN = r"\Asrv-[a-z0-9]{4,32}\Z"
# RFC 1123 labels, and the underscore some images put in their host names.
_HOSTNAME = r"\A(?=.{1,253}\Z)[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\Z"
# A Traefik route's host: lower-case DNS labels, or empty (no route).
_ROUTE_HOST = r"\A((?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)?\Z"
_VERSION = r"\A[0-9A-Za-z][0-9A-Za-z.+~_-]{0,63}\Z"
_WORD = r"\A[a-z][a-z_-]{0,31}\Z"  # container states and health words
_PRINTABLE = r"\A[\x21-\x7e]*\Z"  # printable ASCII, no space: image ids, timestamps
_DOCKER_NAME = r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z"
# It names a directory under the agent's mounts: never "." or "..".
BLOCK_VOLUME_ID_PATTERN = r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z"
BLOCK_DEVICE_PATTERN = (
    r"\A(/dev/disk/by-id/[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}|loop:[A-Za-z0-9][A-Za-z0-9_.-]{0,63})\Z"
)
MAX_VOLUMES = 64  # volumes in one heartbeat; Hetzner attaches at most 16 per server
MAX_VOLUME_ERROR = 300
MAX_VOLUME_GB = 10240  # Hetzner's largest volume
MAX_BACKUPS = 64  # backup jobs in one assignments reply, reports in one heartbeat
MAX_BACKUP_ERROR = 300
# Snapshots a report says the repository kept after its retention ran, as restic's short
# ids: 64 reports of 500 stay far below the heartbeat's 1 MiB body limit.
MAX_KEPT = 500
MAX_FEATURES = 32  # feature names in one register request or heartbeat
# Every agent feature this protocol names (docs/protocol.md, "Agent features"). An agent
# declares the ones it implements; the control plane stores only names in this set and
# never sends a spec or job that needs one the worker's agent did not declare.
FEATURES = frozenset(
    {"block-volumes", "backup-jobs", "health-headers", "tenant-files", "signin-gate", "cpu-weight"}
)

Count = Annotated[int, Meta(ge=0, le=2**31 - 1)]
Generation = Annotated[int, Meta(ge=0, le=GENERATION_MAX)]
Cpus = Annotated[int, Meta(ge=1, le=4096)]
MemoryMb = Annotated[int, Meta(ge=0, le=16 * 1024 * 1024)]  # 16 TiB
DiskGb = Annotated[int, Meta(ge=0, le=1024 * 1024)]  # 1 PiB
Port = Annotated[int, Meta(ge=1, le=65535)]
Interval = Annotated[float, Meta(gt=0, le=86400)]
UserId = Annotated[str, Meta(pattern=USER_ID_PATTERN)]
WorkerId = Annotated[str, Meta(pattern=WORKER_ID_PATTERN)]
Hostname = Annotated[str, Meta(pattern=_HOSTNAME)]
Version = Annotated[str, Meta(pattern=_VERSION)]
Word = Annotated[str, Meta(pattern=_WORD)]
Text = Annotated[str, Meta(max_length=MAX_TEXT)]
BlockVolumeId = Annotated[str, Meta(pattern=BLOCK_VOLUME_ID_PATTERN)]
VolumeState = Literal["mounted", "missing", "error"]
BackupJobId = Annotated[str, Meta(pattern=r"\A[a-z0-9-]{1,40}\Z")]
BackupTag = Annotated[str, Meta(pattern=r"\A[A-Za-z0-9_.:-]{1,64}\Z")]
Retention = Annotated[int, Meta(ge=0, le=1000)]
SnapshotId = Annotated[str, Meta(pattern=r"\A([0-9a-f]{8,64})?\Z")]  # restic's, or empty
ShortSnapshotId = Annotated[str, Meta(pattern=r"\A[0-9a-f]{8}\Z")]  # restic's short form
Feature = Annotated[str, Meta(pattern=r"\A[a-z0-9-]{1,32}\Z")]
Features = Annotated[list[Feature], Meta(max_length=MAX_FEATURES)]


class Resources(msgspec.Struct, frozen=True):
    cpus: Cpus
    memory_mb: MemoryMb
    disk_gb: DiskGb
    memory_available_mb: MemoryMb | None = None
    disk_free_gb: DiskGb | None = None


class RegisterRequest(msgspec.Struct, frozen=True, omit_defaults=True):
    protocol: Annotated[int, Meta(ge=1, le=65535)]
    agent_version: Version
    hostname: Hostname
    resources: Resources
    # What the agent implements (FEATURES); omitted when empty, as an old agent's is.
    features: Features = msgspec.field(default_factory=list)


class RegisterReply(msgspec.Struct, frozen=True):
    worker_id: WorkerId
    secret: Annotated[str, Meta(min_length=32, max_length=256, pattern=_PRINTABLE)]
    heartbeat_interval: Interval


class ContainerReport(msgspec.Struct, frozen=True):
    user_id: UserId
    state: Word
    health: Word
    image_id: Annotated[str, Meta(max_length=255, pattern=_PRINTABLE)] = ""
    started_at: Annotated[str, Meta(max_length=64, pattern=_PRINTABLE)] = ""
    restart_count: Count = 0
    error: Text | None = None


class HostReport(msgspec.Struct, frozen=True):
    docker_version: Annotated[str, Meta(max_length=64, pattern=_PRINTABLE)] | None = None
    metadata_blocked: bool | None = None
    # When the origin certificate Traefik serves expires (Unix seconds); None: none yet.
    origin_cert_expires: Annotated[float, Meta(ge=0, le=1e11)] | None = None


class VolumeReport(msgspec.Struct, frozen=True, omit_defaults=True):
    """One block volume the agent holds or waits for (issue 13): `mounted` once it is
    mounted where the user's container will find it, `missing` while its device does not
    exist, `error` when it exists but cannot be attached, checked or mounted. A mounted
    volume's `error` says why its file system could not grow to its spec's size."""

    id: BlockVolumeId
    state: VolumeState
    error: Annotated[str, Meta(max_length=MAX_VOLUME_ERROR)] = ""


class BackupReport(msgspec.Struct, frozen=True, omit_defaults=True):
    """How one backup job the agent received is going (issue 13): `running` until restic
    is done, then `done` (with the snapshot's id and bytes added, for a snapshot) or
    `failed` (`error` says why, one line, no secret). `finished_at` is the agent's clock.
    `kept`, on a done snapshot whose retention ran: the short ids of every snapshot the
    repository still holds (empty: retention did not run, or kept more than MAX_KEPT)."""

    id: BackupJobId
    state: Literal["running", "done", "failed"]
    snapshot_id: SnapshotId = ""
    bytes_added: Annotated[int, Meta(ge=0, le=GENERATION_MAX)] = 0
    finished_at: Annotated[float, Meta(ge=0, le=1e11)] = 0
    error: Annotated[str, Meta(max_length=MAX_BACKUP_ERROR)] = ""
    kept: Annotated[list[ShortSnapshotId], Meta(max_length=MAX_KEPT)] = msgspec.field(
        default_factory=list
    )


class Heartbeat(msgspec.Struct, frozen=True, omit_defaults=True):
    agent_version: Version
    applied_generation: Generation
    resources: Resources
    containers: Annotated[list[ContainerReport], Meta(max_length=MAX_CONTAINERS)]
    host: HostReport | None = None
    volumes: Annotated[list[VolumeReport], Meta(max_length=MAX_VOLUMES)] = msgspec.field(
        default_factory=list
    )
    backups: Annotated[list[BackupReport], Meta(max_length=MAX_BACKUPS)] = msgspec.field(
        default_factory=list
    )
    # As at registration: an agent upgraded in place declares its new features here.
    features: Features = msgspec.field(default_factory=list)


class HeartbeatReply(msgspec.Struct, frozen=True):
    heartbeat_interval: Interval
    generation: Generation


class PortSpec(msgspec.Struct, frozen=True):
    container_port: Port
    host_ip: Annotated[str, Meta(pattern=r"\A[0-9A-Fa-f.:]{2,45}\Z")] = "127.0.0.1"


class VolumeSpec(msgspec.Struct, frozen=True):
    name: Annotated[str, Meta(pattern=_DOCKER_NAME)]
    target: Annotated[str, Meta(pattern=r"\A/\S{0,1023}\Z")]


class BlockVolumeSpec(msgspec.Struct, frozen=True, omit_defaults=True):
    """The block volume that holds a user's state (issue 13's contract `VolumeSpec`;
    named apart from the named-volume `VolumeSpec` above). `device` is a Hetzner
    `linux_device` under /dev/disk/by-id/, or `loop:<name>` for a sparse file the agent
    attaches to a loop device (the local provider). Only these two forms decode: the
    agent never formats or mounts any other path."""

    id: BlockVolumeId
    device: Annotated[str, Meta(pattern=BLOCK_DEVICE_PATTERN)]
    size_gb: Annotated[int, Meta(ge=1, le=MAX_VOLUME_GB)]


class ResourceSpec(msgspec.Struct, frozen=True, omit_defaults=True):
    """`cpus` is the tenant's reserved share: its CPU weight, so under contention it gets
    at least that much, and it may use idle CPU beyond it (a Node gateway starts in half
    the time). `cpu_limit` makes `cpus` a hard cap as well (CFS quota), as Nomad's
    `cpu_hard_limit` does. Omitted when false, so older specs keep their hash."""

    memory_mb: Annotated[int, Meta(ge=1, le=16 * 1024 * 1024)]
    cpus: Annotated[float, Meta(gt=0, le=4096)]
    pids: Annotated[int, Meta(ge=1, le=2**22)]
    cpu_limit: bool = False


_HealthHeader = Annotated[str, Meta(pattern=r"\A[A-Za-z][A-Za-z0-9-]{0,63}\Z")]
_HeaderValue = Annotated[str, Meta(max_length=256, pattern=r"\A[\x20-\x7e]*\Z")]


class HealthSpec(msgspec.Struct, frozen=True, omit_defaults=True):
    path: Annotated[str, Meta(pattern=r"\A/\S{0,1023}\Z")]
    port: Port
    # How long the tenant may take to become healthy after a start (the profile's
    # allowance); 0 leaves it to the agent's HEALTH_GATE.
    start_seconds: Annotated[int, Meta(ge=0, le=3600)] = 0
    # Sent with every probe: OpenClaw's startup probe answers a proxied caller only when
    # it names a client (X-Forwarded-For); /healthz says "live" seconds before sessions work.
    headers: Annotated[dict[_HealthHeader, _HeaderValue], Meta(max_length=8)] = msgspec.field(
        default_factory=dict
    )


# Shared with the tenant profiles' checks (control/settings/profiles.py), which must
# accept exactly what a worker will.
ENV_NAME_PATTERN = r"\A[A-Za-z_][A-Za-z0-9_]{0,127}\Z"
_HEADER_NAME = r"[A-Za-z][A-Za-z0-9-]{0,63}"
HEADER_NAME_PATTERN = rf"\A{_HEADER_NAME}\Z"
_EnvName = Annotated[str, Meta(pattern=ENV_NAME_PATTERN)]
_LabelName = Annotated[str, Meta(pattern=r"\A[A-Za-z0-9][A-Za-z0-9._/-]{0,127}\Z")]
_Value = Annotated[str, Meta(max_length=65536)]


# A path inside a volume: relative, no "..", no empty or hidden-traversal segments.
REL_PATH_PATTERN = (
    r"\A(?!.*(?:\A|/)\.\.(?:/|\Z))[A-Za-z0-9._-]{1,128}(/[A-Za-z0-9._-]{1,128}){0,7}\Z"
)
_JSON_TEXT = Annotated[str, Meta(max_length=65536)]


class ConfigFileSpec(msgspec.Struct, frozen=True):
    """A JSON config file in one of the spec's volumes, prepared before each start:
    `seed` (a JSON object) is written only when the file is absent; `owned` (a JSON
    object) is deep-merged over the file every time, so the platform's keys stay in
    sync and the customer's other keys are kept. In `owned`, the text
    `{{network_gateway}}` stands for the gateway address of the user's network."""

    volume: Annotated[str, Meta(pattern=_DOCKER_NAME)]
    path: Annotated[str, Meta(pattern=REL_PATH_PATTERN)]
    seed: _JSON_TEXT
    owned: _JSON_TEXT


class SecretFileSpec(msgspec.Struct, frozen=True):
    """A file written (replaced) in one of the spec's volumes before each start, mode
    0600 and owned by the container's user; its content appears nowhere else."""

    volume: Annotated[str, Meta(pattern=_DOCKER_NAME)]
    path: Annotated[str, Meta(pattern=REL_PATH_PATTERN)]
    content: Annotated[str, Meta(max_length=65536)]


class ContainerSpec(msgspec.Struct, frozen=True):
    user_id: UserId
    name: Annotated[str, Meta(pattern=_DOCKER_NAME)]
    image: Annotated[str, Meta(pattern=r"\A\S{1,512}\Z")]
    user: Annotated[str, Meta(pattern=r"\A[0-9]{1,10}(:[0-9]{1,10})?\Z")]
    command: Annotated[list[_Value], Meta(max_length=256)] | None
    env: Annotated[dict[_EnvName, _Value], Meta(max_length=256)]
    ports: Annotated[list[PortSpec], Meta(max_length=16)]
    volumes: Annotated[list[VolumeSpec], Meta(max_length=16)]
    resources: ResourceSpec
    health: HealthSpec
    labels: Annotated[dict[_LabelName, Annotated[str, Meta(max_length=1024)]], Meta(max_length=64)]
    hostname: Annotated[str, Meta(pattern=r"\A[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")]
    spec_hash: Annotated[str, Meta(pattern=r"\A[0-9a-f]{1,128}\Z")]
    # Full host name Traefik routes to this container, e.g. "alice.example.com".
    route_host: Annotated[str, Meta(pattern=_ROUTE_HOST)] = ""
    config_files: Annotated[list[ConfigFileSpec], Meta(max_length=8)] = msgspec.field(
        default_factory=list
    )
    secret_files: Annotated[list[SecretFileSpec], Meta(max_length=8)] = msgspec.field(
        default_factory=list
    )
    # Sign-in gate (docs/signin.md): empty means the route goes straight to the
    # container; otherwise the worker's verifier checks tickets and sessions with this
    # key and passes the user's id to the container in `identity_header`.
    signin_key: Annotated[str, Meta(pattern=r"\A([0-9a-f]{64})?\Z")] = ""
    identity_header: Annotated[str, Meta(pattern=rf"\A({_HEADER_NAME})?\Z")] = ""
    # Issue 13: None keeps the named Docker volumes; otherwise they become directories
    # on this block volume, and the container is created only once it is mounted.
    volume: BlockVolumeSpec | None = None


_Secret = Annotated[str, Meta(pattern=_PRINTABLE)]


class BackupJob(msgspec.Struct, frozen=True, omit_defaults=True):
    """One snapshot or restore of a user's block volume, for the worker where that volume
    is mounted (docs/backups.md). It carries the repository's password and the bucket's
    S3 keys: the agent keeps jobs in memory only and never logs those three. The keep_*
    counts are the retention applied after a successful snapshot (all 0: no prune).
    `volume` describes the volume as a spec does (its `id` is `volume_id`), so the agent
    can mount it for the job when no spec names it (after a restart, for a restore)."""

    id: BackupJobId
    user_id: UserId
    kind: Literal["snapshot", "restore"]
    volume_id: BlockVolumeId
    repository: Annotated[str, Meta(max_length=512, pattern=r"\As3:http[\x21-\x7e]*\Z")]
    password: Annotated[_Secret, Meta(min_length=16, max_length=128)]
    access_key: Annotated[_Secret, Meta(max_length=128)]
    secret_key: Annotated[_Secret, Meta(max_length=256)]
    snapshot_id: SnapshotId = ""
    tags: Annotated[list[BackupTag], Meta(max_length=8)] = msgspec.field(default_factory=list)
    keep_hourly: Retention = 0
    keep_daily: Retention = 0
    keep_weekly: Retention = 0
    volume: BlockVolumeSpec | None = None


class Assignments(msgspec.Struct, frozen=True):
    generation: Generation
    containers: Annotated[list[ContainerSpec], Meta(max_length=MAX_CONTAINERS)]
    # Users whose volumes the worker deletes once their container is gone.
    purge: Annotated[list[UserId], Meta(max_length=MAX_CONTAINERS)] = msgspec.field(
        default_factory=list
    )
    # Backup jobs: not part of any spec (no spec hash changes), never written to disk.
    backups: Annotated[list[BackupJob], Meta(max_length=MAX_BACKUPS)] = msgspec.field(
        default_factory=list
    )


MAX_PEM = 16384
# PEM text: printable ASCII lines; the receiver parses it with a real X.509 parser.
Pem = Annotated[str, Meta(max_length=MAX_PEM, pattern=r"\A[\x20-\x7e\n]*\Z")]
# A name an origin certificate may cover: a host name, or one leading wildcard label.
OriginHostname = Annotated[
    str,
    Meta(max_length=253, pattern=r"\A(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}\Z"),
]


class OriginTlsPolicy(msgspec.Struct, frozen=True):
    """What the control plane signs for this worker (docs/protocol.md, "Origin TLS"): a
    CSR must ask for exactly `hostnames`; none means origin TLS is off (the local
    provider) and the agent leaves Traefik's TLS alone. `client_ca` is the certificate
    every client on 443 must present (the deployment's authenticated-origin-pull one)."""

    hostnames: Annotated[list[OriginHostname], Meta(max_length=4)]
    client_ca: Pem = ""


class OriginCertRequest(msgspec.Struct, frozen=True):
    """A CSR (PEM) made by the worker; the private key never leaves the worker."""

    csr: Pem


class OriginCertReply(msgspec.Struct, frozen=True):
    certificate: Pem  # Cloudflare Origin CA's, for the CSR's key
    client_ca: Pem  # as in OriginTlsPolicy
    expires_at: Annotated[float, Meta(ge=0, le=1e11)]


def clip_errors(beat: Heartbeat) -> Heartbeat:
    """`beat` with each container's error cut to MAX_TEXT characters and each volume's
    and backup's to MAX_VOLUME_ERROR and MAX_BACKUP_ERROR: the agent's free text
    (Docker's messages, mount's, restic's) must never get its heartbeat refused."""
    if (
        all(c.error is None or len(c.error) <= MAX_TEXT for c in beat.containers)
        and all(len(v.error) <= MAX_VOLUME_ERROR for v in beat.volumes)
        and all(len(b.error) <= MAX_BACKUP_ERROR for b in beat.backups)
    ):
        return beat
    containers = [
        c if c.error is None else msgspec.structs.replace(c, error=_clip(c.error, MAX_TEXT))
        for c in beat.containers
    ]
    volumes = [
        msgspec.structs.replace(v, error=_clip(v.error, MAX_VOLUME_ERROR)) for v in beat.volumes
    ]
    backups = [
        msgspec.structs.replace(b, error=_clip(b.error, MAX_BACKUP_ERROR)) for b in beat.backups
    ]
    return msgspec.structs.replace(beat, containers=containers, volumes=volumes, backups=backups)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
