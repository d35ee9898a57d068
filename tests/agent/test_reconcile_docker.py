"""The reconciler against the real Docker engine, without a control plane."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import docker
import pytest

from agent.host_config import DEFAULT_LOGS, LogLimit
from agent.metadata_block import MetadataBlock
from agent.ownership import Owner
from agent.reconcile import Reconciler
from agent.reconcile_steps import ReconcilerOptions
from agent.runtime import DockerRuntime
from agent.traefik import RouteOptions, route_file
from shared.protocol import Assignments
from tests.agent.conftest import BROKEN, GOOD, GOOD2, new_user
from tests.agent.images import PORT
from tests.agent.specs import make_spec
from tests.agent.test_e2e import until
from tests.ports import free_port

pytestmark = pytest.mark.docker


MakeReconciler = Callable[..., Awaitable[Reconciler]]


@pytest.fixture
async def make_reconciler(
    tmp_path: Path, test_images: dict[str, str]
) -> AsyncIterator[MakeReconciler]:
    """Reconcilers acting as the given worker ids, all on the shared engine and sharing
    one Traefik directory, as two agents on one machine would."""
    made: list[Reconciler] = []

    async def make(worker_id: str, logs: LogLimit = DEFAULT_LOGS) -> Reconciler:
        rec = Reconciler(
            DockerRuntime(None, timeout=60, logs=logs),
            MetadataBlock(["iptables"]),
            ReconcilerOptions(
                health_gate=8,
                health_timeout=1,
                stop_grace=2,
                backoff_base=0.2,
                backoff_max=1,
                traefik_dir=tmp_path / "traefik",
                route_options=RouteOptions(("web",), tls=False),
            ),
            Owner(worker_id),
        )
        made.append(rec)
        return rec

    yield make
    for rec in made:
        await rec.close()
        rec.runtime.close()


def new_worker() -> str:
    return f"srv-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def reconciler(make_reconciler: MakeReconciler) -> Reconciler:
    return await make_reconciler(new_worker())


def route_of(rec: Reconciler, user: str) -> Path:
    assert rec.owner is not None and rec.opts.traefik_dir is not None
    return route_file(rec.opts.traefik_dir, rec.owner.worker_id, user)


def by_user(dclient: docker.DockerClient, user: str) -> list[docker.models.containers.Container]:
    return dclient.containers.list(all=True, filters={"label": f"clawfleet.user={user}"})


async def test_assignment_runs_hardened_container(
    reconciler: Reconciler, dclient: docker.DockerClient, users: list[str]
) -> None:
    user = new_user()
    users.append(user)
    spec = make_spec(user, GOOD, route_host=f"{user}.example.test")
    await reconciler.reconcile(Assignments(generation=1, containers=[spec]))

    [c] = by_user(dclient, user)
    a = c.attrs
    hc = a["HostConfig"]
    assert a["State"]["Running"] is True
    assert hc["CapDrop"] == ["ALL"]
    assert hc["SecurityOpt"] == ["no-new-privileges"]
    assert hc["Init"] is True
    assert hc["Privileged"] is False
    assert hc["Memory"] == 64 * 2**20
    # Half a CPU reserved: a weight of 512, no quota, so idle CPU speeds a start-up.
    assert (hc["CpuShares"], hc["NanoCpus"]) == (512, 0)
    assert hc["PidsLimit"] == 64
    assert hc["RestartPolicy"]["Name"] == "unless-stopped"
    assert hc["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}
    assert hc["NetworkMode"] not in ("host", "default", "bridge")
    assert hc["PidMode"] == "" and hc["IpcMode"] in ("private", "shareable", "")
    assert a["Config"]["User"] == "1000:1000"
    binds = hc["PortBindings"][f"{PORT}/tcp"]
    assert binds == [{"HostIp": "127.0.0.1", "HostPort": ""}]
    live = a["NetworkSettings"]["Ports"][f"{PORT}/tcp"]
    assert all(b["HostIp"] == "127.0.0.1" for b in live) and int(live[0]["HostPort"]) > 0
    assert not any("docker.sock" in (m.get("Source") or "") for m in a["Mounts"])
    [mount] = a["Mounts"]
    assert (mount["Type"], mount["Name"], mount["Destination"]) == (
        "volume",
        f"clawfleet-{user}-state",
        "/data",
    )
    assert "GATEWAY_TOKEN=s3cret-gw-token" in a["Config"]["Env"]
    assert "s3cret-gw-token" not in " ".join(a["Args"] + [a["Path"]])
    labels = a["Config"]["Labels"]
    assert labels["clawfleet.managed"] == "true" and labels["clawfleet.user"] == user
    assert labels["clawfleet.spec_hash"] == spec.spec_hash
    assert labels["clawfleet.generation"] == "1"
    [net_name] = a["NetworkSettings"]["Networks"].keys()
    net = dclient.networks.get(net_name)
    assert net.attrs["Driver"] == "bridge"
    assert net.attrs["Labels"]["clawfleet.user"] == user
    assert net.attrs["Labels"]["clawfleet.managed"] == "true"
    vol = dclient.volumes.get(f"clawfleet-{user}-state")
    assert vol.attrs["Labels"]["clawfleet.user"] == user
    assert labels["clawfleet.worker"] == reconciler.owner.worker_id  # type: ignore[union-attr]
    assert net.attrs["Labels"]["clawfleet.worker"] == labels["clawfleet.worker"]
    assert vol.attrs["Labels"]["clawfleet.worker"] == labels["clawfleet.worker"]
    assert route_of(reconciler, user).exists()

    # A second pass adopts it as it is.
    await reconciler.reconcile()
    [again] = by_user(dclient, user)
    assert again.id == c.id
    assert again.attrs["State"]["StartedAt"] == a["State"]["StartedAt"]


async def test_a_tenant_printing_without_end_never_holds_more_log_than_its_limit(
    make_reconciler: MakeReconciler, dclient: docker.DockerClient, users: list[str]
) -> None:
    """8 MB printed by the tenant's own process: Docker keeps at most 2 files of 1 MB."""
    rec = await make_reconciler(new_worker(), LogLimit(max_mb=1, files=2))
    user = new_user()
    users.append(user)
    await rec.reconcile(Assignments(generation=1, containers=[make_spec(user, GOOD)]))
    [c] = by_user(dclient, user)
    # PID 1's stdout is the container's log stream; the tenant's user may write to it.
    code, out = c.exec_run(
        ["/bin/busybox", "sh", "-c", "yes 0123456789abcdef | head -c 8000000 > /proc/1/fd/1"]
    )
    assert code == 0, out
    log_path = Path(dclient.api.inspect_container(c.id)["LogPath"])
    # Docker copies the stream into the file after the writer returns: wait until the
    # copy has rotated and stopped growing (bounded; the bound is checked at every look).
    sizes: list[int] = []

    async def copied() -> bool:
        kept = sorted(log_path.parent.glob(log_path.name + "*"))
        assert sum(p.stat().st_size for p in kept) <= 2 * 2**20 + 64 * 1024  # a line's slack
        sizes.append(log_path.stat().st_size)
        return len(kept) > 1 and sizes[-2:] == [sizes[-1]] * 2

    await until(copied, "Docker's copy of the log rotated and done", 30)
    kept = sorted(log_path.parent.glob(log_path.name + "*"))
    assert [p.name for p in kept] == [log_path.name, log_path.name + ".1"]  # rotated


async def test_drift_repaired_and_foreign_untouched(
    reconciler: Reconciler, dclient: docker.DockerClient, users: list[str]
) -> None:
    user = new_user()
    users.append(user)
    foreign = dclient.containers.run(
        GOOD, name=f"foreign-{user}", detach=True, labels={"clawfleet.user": user}
    )
    try:
        await reconciler.reconcile(Assignments(generation=1, containers=[make_spec(user, GOOD)]))
        [mine] = [c for c in by_user(dclient, user) if c.id != foreign.id]
        mine.stop(timeout=1)
        await reconciler.reconcile()
        mine.reload()
        assert mine.status == "running"
        mine.remove(force=True)
        await reconciler.reconcile()
        [back] = [c for c in by_user(dclient, user) if c.id != foreign.id]
        assert back.id != mine.id and back.status == "running"
        # Unassigning everything leaves the unlabelled-as-managed container alone.
        await reconciler.reconcile(Assignments(generation=2, containers=[]))
        foreign.reload()
        assert foreign.status == "running"
        assert [c.id for c in by_user(dclient, user)] == [foreign.id]
    finally:
        foreign.remove(force=True)


async def test_unassign_keeps_volume_then_purge_deletes_it(
    reconciler: Reconciler, dclient: docker.DockerClient, users: list[str]
) -> None:
    user = new_user()
    users.append(user)
    await reconciler.reconcile(Assignments(generation=1, containers=[make_spec(user, GOOD)]))
    assert len(by_user(dclient, user)) == 1
    await reconciler.reconcile(Assignments(generation=2, containers=[]))
    assert by_user(dclient, user) == []
    assert dclient.volumes.get(f"clawfleet-{user}-state").name == f"clawfleet-{user}-state"
    assert dclient.networks.list(filters={"label": f"clawfleet.user={user}"}) == []
    assert not route_of(reconciler, user).exists()
    await reconciler.reconcile(Assignments(generation=3, containers=[], purge=[user]))
    assert dclient.volumes.list(filters={"label": f"clawfleet.user={user}"}) == []


async def test_upgrade_health_gate_and_rollback(
    reconciler: Reconciler,
    dclient: docker.DockerClient,
    users: list[str],
    test_images: dict[str, str],
) -> None:
    user = new_user()
    users.append(user)
    await reconciler.reconcile(Assignments(generation=1, containers=[make_spec(user, GOOD)]))
    [v1] = by_user(dclient, user)

    await reconciler.reconcile(Assignments(generation=2, containers=[make_spec(user, GOOD2)]))
    [v2] = by_user(dclient, user)
    assert v2.id != v1.id and v2.image.id == test_images[GOOD2]
    assert v2.status == "running"

    broken = make_spec(user, BROKEN)
    await reconciler.reconcile(Assignments(generation=3, containers=[broken]))
    [after] = by_user(dclient, user)
    assert after.id == v2.id, "rolled back to the previous container"
    assert after.status == "running" and after.image.id == test_images[GOOD2]
    assert after.name == f"clawfleet-{user}"
    assert "rolled back" in reconciler.errors[user]
    [report] = await reconciler.reports()
    assert report.error is not None and "rolled back" in report.error
    # The failed spec is not retried on every pass.
    await reconciler.reconcile()
    [still] = by_user(dclient, user)
    assert still.id == v2.id


async def test_a_new_plan_s_limits_replace_the_container_on_the_same_state_volume(
    reconciler: Reconciler, dclient: docker.DockerClient, users: list[str]
) -> None:
    """A plan change (control/billing/rules.py) reaches the worker as the same spec with
    other resources: the container is replaced with the new limits, its data kept."""
    user = new_user()
    users.append(user)
    await reconciler.reconcile(Assignments(generation=1, containers=[make_spec(user, GOOD)]))
    [small] = by_user(dclient, user)
    state = dclient.volumes.get(f"clawfleet-{user}-state")
    mark = Path(state.attrs["Mountpoint"]) / "mark"  # the image has no shell to write it
    mark.write_text("kept")
    await reconciler.reconcile(
        Assignments(generation=2, containers=[make_spec(user, GOOD, memory_mb=128)])
    )
    [big] = by_user(dclient, user)
    assert big.id != small.id and big.status == "running"
    assert big.attrs["HostConfig"]["Memory"] == 128 * 1024 * 1024
    assert small.attrs["HostConfig"]["Memory"] == 64 * 1024 * 1024
    mounted = {m["Name"]: m["Destination"] for m in big.attrs["Mounts"] if m["Type"] == "volume"}
    assert mounted == {state.name: "/data"} and mark.read_text() == "kept"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """A real local registry (Debian's docker-registry) on 127.0.0.1."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip("docker-registry is not installed")
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'registry'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(
        [binary, "serve", str(config)],
        stdout=(tmp_path / "registry.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            # Bounded polling: the registry child offers nothing to await but its port.
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def push(dclient: docker.DockerClient, source: str, repo: str, tag: str) -> str:
    """Push `source` as repo:tag, drop the local tag, return the repo@digest reference."""
    image = dclient.images.get(source)
    image.tag(repo, tag)
    for line in dclient.images.push(repo, tag=tag, stream=True, decode=True):
        assert "error" not in line, line
    digest = next(
        d for d in dclient.images.get(f"{repo}:{tag}").attrs["RepoDigests"] if d.startswith(repo)
    )
    dclient.images.remove(f"{repo}:{tag}")
    return str(digest)


async def test_pull_by_tag_and_digest_and_failed_pull_reported(
    reconciler: Reconciler,
    dclient: docker.DockerClient,
    users: list[str],
    registry: str,
    test_images: dict[str, str],
) -> None:
    repo = f"{registry}/clawfleet-test/agent"
    push(dclient, GOOD, repo, "v1")
    v2_digest = push(dclient, GOOD2, repo, "v2")
    pulled = [f"{repo}:v1", v2_digest]
    try:
        user = new_user()
        users.append(user)
        await reconciler.reconcile(
            Assignments(generation=1, containers=[make_spec(user, f"{repo}:v1")])
        )
        [v1] = by_user(dclient, user)
        assert v1.status == "running" and v1.image.id == test_images[GOOD]

        await reconciler.reconcile(
            Assignments(generation=2, containers=[make_spec(user, v2_digest)])
        )
        [v2] = by_user(dclient, user)
        assert v2.id != v1.id and v2.image.id == test_images[GOOD2]
        assert v2.status == "running"

        # A tag the registry does not have: reported, the running container is kept.
        await reconciler.reconcile(
            Assignments(generation=3, containers=[make_spec(user, f"{repo}:nope")])
        )
        [kept] = by_user(dclient, user)
        assert kept.id == v2.id and kept.status == "running"
        [report] = await reconciler.reports()
        assert report.error is not None and "nope" in report.error
    finally:
        for ref in pulled:
            with contextlib.suppress(docker.errors.APIError):
                dclient.images.remove(ref)


def fingerprints(dclient: docker.DockerClient, user: str) -> list[tuple[str, str, str]]:
    return [
        (c.id, c.attrs["State"]["StartedAt"], c.status)
        for c in sorted(by_user(dclient, user), key=lambda c: c.id)
    ]


async def test_two_agents_on_one_engine_leave_each_other_alone(
    make_reconciler: MakeReconciler, dclient: docker.DockerClient, users: list[str]
) -> None:
    a, b = await make_reconciler(new_worker()), await make_reconciler(new_worker())
    ua, ub = new_user(), new_user()
    users.extend([ua, ub])
    spec_a = make_spec(ua, GOOD, route_host=f"{ua}.example.test")
    spec_b = make_spec(ub, GOOD, route_host=f"{ub}.example.test")
    await a.reconcile(Assignments(generation=1, containers=[spec_a]))
    await b.reconcile(Assignments(generation=1, containers=[spec_b]))
    theirs = fingerprints(dclient, ub)
    assert len(theirs) == 1 and theirs[0][2] == "running"
    assert route_of(b, ub).exists()

    # A is told nothing runs on it and to purge B's user's data: it touches none of B's.
    await a.reconcile(Assignments(generation=2, containers=[], purge=[ub]))
    assert by_user(dclient, ua) == []
    assert fingerprints(dclient, ub) == theirs
    assert dclient.networks.list(filters={"label": f"clawfleet.user={ub}"}) != []
    assert dclient.volumes.get(f"clawfleet-{ub}-state").name == f"clawfleet-{ub}-state"
    assert route_of(b, ub).exists()
    [report] = await b.reports()
    assert (report.state, report.error) == ("running", None)

    # Both are told to run the same user (two clusters, one user id): B's container stays
    # B's; A refuses to take it over and reports why instead.
    await a.reconcile(Assignments(generation=3, containers=[make_spec(ub, GOOD2)]))
    assert fingerprints(dclient, ub) == theirs
    [report] = await a.reports()
    assert report.state == "failed" and report.error
    await b.reconcile()
    assert fingerprints(dclient, ub) == theirs


async def test_legacy_objects_adopted_only_for_desired_users_then_relabelled(
    reconciler: Reconciler, dclient: docker.DockerClient, users: list[str]
) -> None:
    """What a version before worker labels left: adopted by name for a user this worker
    runs, replaced once so the container gets the labels; another user's is left alone."""
    user, stranger = new_user(), new_user()
    users.extend([user, stranger])
    old = {"clawfleet.managed": "true", "clawfleet.spec_hash": "old"}
    dclient.volumes.create(
        f"clawfleet-{user}-state", labels={"clawfleet.managed": "true", "clawfleet.user": user}
    )
    legacy = dclient.containers.run(
        GOOD,
        name=f"clawfleet-{user}",
        user="1000:1000",
        detach=True,
        labels={**old, "clawfleet.user": user},
        volumes={f"clawfleet-{user}-state": {"bind": "/data", "mode": "rw"}},
    )
    other = dclient.containers.run(
        GOOD,
        name=f"clawfleet-{stranger}",
        user="1000:1000",
        detach=True,
        labels={**old, "clawfleet.user": stranger},
    )
    await reconciler.reconcile(Assignments(generation=1, containers=[make_spec(user, GOOD)]))
    [now] = by_user(dclient, user)
    assert now.id != legacy.id and now.status == "running" and now.name == f"clawfleet-{user}"
    assert now.labels["clawfleet.worker"] == reconciler.owner.worker_id  # type: ignore[union-attr]
    [mount] = now.attrs["Mounts"]
    assert mount["Name"] == f"clawfleet-{user}-state"  # the data it had, not a new volume
    other.reload()
    assert other.status == "running" and "clawfleet.worker" not in other.labels
    await reconciler.reconcile(Assignments(generation=2, containers=[]))
    assert by_user(dclient, user) == []
    other.reload()
    assert other.status == "running"
