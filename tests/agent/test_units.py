"""Pure parts of the agent: configuration, state files, retry decisions, planning,
route rendering, metadata-rule parsing."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent import client as cp
from agent import health
from agent.config import ConfigError, load_settings, parse_env_file, read_environment
from agent.docker_objects import Observed
from agent.host_config import cpu_options, is_root_user
from agent.metadata_block import MetadataBlock, rule_position
from agent.pacing import MIN_PASS, next_beat, next_pass
from agent.reconcile import Reconciler
from agent.reconcile_plan import Create, PurgeVolumes, Remove, RemoveNetwork, Replace, Start, plan
from agent.reconcile_steps import ReconcilerOptions
from agent.runtime import DockerRuntime
from agent.state import Credentials, StateStore
from agent.traefik import Gate, RouteOptions, prune, render, write_route
from shared.protocol import (
    Assignments,
    ContainerReport,
    HealthSpec,
    Heartbeat,
    Resources,
    ResourceSpec,
)
from tests.agent.specs import make_spec

ROOT = Path(__file__).resolve().parents[2]


def test_settings_defaults_and_overrides() -> None:
    s = load_settings({"CONTROL_URL": "https://cp.example.com/", "HEALTH_GATE": "5"})
    assert s.control_url == "https://cp.example.com"
    assert s.state_dir == Path("/var/lib/clawfleet")
    assert s.traefik_dynamic_dir == Path("/etc/clawfleet/traefik")
    assert s.health_gate == 5.0
    assert s.iptables == ("iptables",)
    s2 = load_settings({"CONTROL_URL": "http://x", "IPTABLES": "ip netns exec ns1 iptables"})
    assert s2.iptables == ("ip", "netns", "exec", "ns1", "iptables")


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, "CONTROL_URL"),
        ({"CONTROL_URL": "ftp://x"}, "CONTROL_URL"),
        ({"CONTROL_URL": "http://x", "BOOTSTRAP_TOKEN": "nodot"}, "BOOTSTRAP_TOKEN"),
        ({"CONTROL_URL": "http://x", "STATE_DIR": "rel"}, "STATE_DIR"),
        ({"CONTROL_URL": "http://x", "HEALTH_GATE": "soon"}, "HEALTH_GATE"),
        ({"CONTROL_URL": "http://x", "POLL_WAIT": "90"}, "POLL_WAIT"),
        ({"CONTROL_URL": "http://x", "TRAEFIK_TLS": "maybe"}, "TRAEFIK_TLS"),
        # float() takes these; a setting does not.
        ({"CONTROL_URL": "http://x", "HEALTH_GATE": "nan"}, "HEALTH_GATE"),
        ({"CONTROL_URL": "http://x", "HEALTH_GATE": "inf"}, "HEALTH_GATE"),
        ({"CONTROL_URL": "http://x", "HEALTH_GATE": "1e3"}, "HEALTH_GATE"),
        ({"CONTROL_URL": "http://x", "STOP_GRACE": "\u0663\u0660"}, "STOP_GRACE"),
        ({"CONTROL_URL": "http://x", "BOOTSTRAP_TOKEN": "abc.d\u00e9f"}, "BOOTSTRAP_TOKEN"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        load_settings(env)


def test_malformed_token_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"CONTROL_URL": "http://x", "BOOTSTRAP_TOKEN": "supersecretvalue"})
    assert "supersecretvalue" not in str(info.value)


def test_env_file_then_environment(tmp_path: Path) -> None:
    f = tmp_path / "agent.env"
    f.write_text("# comment\nCONTROL_URL='http://a'\nexport STATE_DIR=/srv/x\n\n")
    assert parse_env_file(f.read_text()) == {"CONTROL_URL": "http://a", "STATE_DIR": "/srv/x"}
    merged = read_environment({"AGENT_ENV_FILE": str(f), "STATE_DIR": "/srv/y"})
    assert merged["CONTROL_URL"] == "http://a" and merged["STATE_DIR"] == "/srv/y"
    with pytest.raises(ConfigError, match="AGENT_ENV_FILE"):
        read_environment({"AGENT_ENV_FILE": str(tmp_path / "missing.env")})


@pytest.mark.parametrize(
    "env",
    [
        {"AGENT_ENV_FILE": "/nonexistent/agent.env"},
        {"AGENT_ENV_FILE": os.devnull},
        {
            "AGENT_ENV_FILE": os.devnull,
            "CONTROL_URL": "http://127.0.0.1:9",
            "STATE_DIR": "{}",
        },
    ],
)
def test_main_bad_config_is_one_line_and_exit_2(env: dict[str, str], tmp_path: Path) -> None:
    env = {k: v.format(tmp_path / "state") for k, v in env.items()}
    full = {"PATH": os.environ["PATH"], **env}
    proc = subprocess.run(
        [sys.executable, "-m", "agent"],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr


def test_state_files_are_0600_and_round_trip(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.ensure_dir()
    assert store.load_credentials() is None
    store.save_credentials(Credentials("w1", "topsecret"))
    path = tmp_path / "state" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.load_credentials() == Credentials("w1", "topsecret")
    assert "topsecret" not in repr(store.load_credentials())
    desired = Assignments(generation=7, containers=[make_spec("u1", "img:1")], purge=["u9"])
    store.save_desired(desired)
    assert stat.S_IMODE((tmp_path / "state" / "desired.json").stat().st_mode) == 0o600
    assert store.load_desired() == desired
    assert [p.name for p in (tmp_path / "state").iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    ("status", "code", "transient", "revoked", "unknown"),
    [
        (0, "unreachable", True, False, False),
        (500, "internal_error", True, False, False),
        (503, "x", True, False, False),
        (429, "x", True, False, False),
        (401, "unauthorized", False, False, False),
        (403, "worker_revoked", False, True, False),
        (401, "unknown_worker", False, False, True),
        (401, "bad_signature", False, False, False),
        (404, "not_found", False, False, False),
    ],
)
def test_retry_decisions(
    status: int, code: str, transient: bool, revoked: bool, unknown: bool
) -> None:
    err = cp.ControlPlaneError(status, code, "m")
    assert (cp.is_transient(err), cp.is_revoked(err), cp.is_unknown_worker(err)) == (
        transient,
        revoked,
        unknown,
    )


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [
        (0, 0.0, 0.5),
        (0, 1.0, 1.0),
        (3, 1.0, 8.0),
        (10, 0.0, 30.0),
        (10, 1.0, 60.0),
        (500, 1.0, 60.0),
    ],
)
def test_backoff_is_capped_with_jitter(attempt: int, rand: float, expected: float) -> None:
    assert cp.backoff_delay(attempt, 1.0, 60.0, lambda: rand) == expected


def obs(cid: str, user: str, spec_hash: str, status: str = "running") -> Observed:
    return Observed(cid, f"clawfleet-{user}", user, spec_hash, "img", "sha256:x", status, "", 0)


A = make_spec("a", "img:1")
A2 = make_spec("a", "img:2")
B = make_spec("b", "img:1")


@pytest.mark.parametrize(
    ("desired", "observed", "kw", "expected"),
    [
        pytest.param({"a": A}, [], {}, [Create(A)], id="missing-create"),
        pytest.param({"a": A}, [obs("c1", "a", A.spec_hash)], {}, [], id="adopt-running"),
        pytest.param(
            {"a": A},
            [obs("c1", "a", A.spec_hash, "exited")],
            {},
            [Start("a", "c1")],
            id="stopped-start",
        ),
        pytest.param(
            {"a": A},
            [obs("c1", "a", A.spec_hash, "restarting")],
            {},
            [],
            id="restarting-left-to-docker",
        ),
        pytest.param(
            {"a": A2},
            [obs("c1", "a", A.spec_hash)],
            {},
            [Replace(A2, obs("c1", "a", A.spec_hash))],
            id="hash-changed-replace",
        ),
        pytest.param(
            {"a": A2},
            [obs("c1", "a", A.spec_hash)],
            {"deferred": {"a"}},
            [],
            id="failed-upgrade-keeps-old",
        ),
        pytest.param({"a": A}, [], {"deferred": {"a"}}, [], id="pull-backoff-waits"),
        pytest.param(
            {"a": A},
            [obs("c1", "a", "old", "exited"), obs("c2", "a", A.spec_hash)],
            {},
            [Remove("a", "c1")],
            id="duplicate-removed",
        ),
        pytest.param(
            {},
            [obs("c1", "a", A.spec_hash)],
            {"networks": {"a": ["n1"]}},
            [Remove("a", "c1"), RemoveNetwork("a", "n1")],
            id="unassigned-removed",
        ),
        pytest.param({}, [], {"volumes": {"a": ["v1"]}}, [], id="volumes-kept-without-purge"),
        pytest.param(
            {},
            [],
            {"volumes": {"a": ["v1"]}, "purge": {"a"}},
            [PurgeVolumes("a", ("v1",))],
            id="purge",
        ),
        pytest.param(
            {"a": A},
            [],
            {"volumes": {"a": ["v1"]}, "purge": {"a"}},
            [Create(A)],
            id="purge-ignored-while-assigned",
        ),
        pytest.param(
            {"a": A, "b": B},
            [obs("c9", "z", "h")],
            {},
            [Remove("z", "c9"), Create(A), Create(B)],
            id="removals-first",
        ),
    ],
)
def test_plan(desired: dict, observed: list, kw: dict, expected: list) -> None:  # type: ignore[type-arg]
    assert plan(desired, observed, **kw) == expected


@pytest.mark.parametrize(
    ("user", "root"),
    [
        ("1000:1000", False),
        ("1:1", False),
        ("2147483647:2147483647", False),
        ("0", True),
        ("root:root", True),
        ("", True),
        ("0:1000", True),
        # A name may be root in the image, a uid alone may run with gid 0.
        ("node", True),
        ("1000", True),
        ("00", True),
        ("00:00", True),
        ("1000:0", True),
        ("1000:00", True),
        ("01000:1000", True),
        ("2147483648:1000", True),
        ("4294967296:1000", True),
        ("1000:1000\n", True),
        (" 1000:1000", True),
        ("-1:1000", True),
        ("\u0661\u0660\u0660\u0660:1000", True),  # Arabic-Indic digits: int() reads them
    ],
)
def test_root_user_refused(user: str, root: bool) -> None:
    assert is_root_user(user) is root


def test_route_render_and_prune(tmp_path: Path) -> None:
    options = RouteOptions(("websecure",), True, "le")
    doc = json.loads(render("srv-w1", "u1", "alice.example.com", 41234, options))
    router = doc["http"]["routers"]["clawfleet-u1-srv-w1"]
    assert router["rule"] == "Host(`alice.example.com`)"
    assert router["tls"] == {"certResolver": "le"}
    assert doc["http"]["services"]["clawfleet-u1-srv-w1"]["loadBalancer"]["servers"] == [
        {"url": "http://127.0.0.1:41234"}
    ]
    for host in ("evil`) || Host(`x", "alice.example.com\n", "ALICE.example.com", "a..b"):
        with pytest.raises(ValueError):
            render("srv-w1", "u1", host, 1, RouteOptions())
    for user in ("../u1", "u1\n", "u1/x", "u1@srv-w2"):
        with pytest.raises(ValueError):
            write_route(tmp_path, "srv-w1", user, "a.example.com", 1, RouteOptions())
    assert write_route(tmp_path, "srv-w1", "u1", "a.example.com", 1, RouteOptions()) is True
    assert write_route(tmp_path, "srv-w1", "u1", "a.example.com", 1, RouteOptions()) is False
    assert write_route(tmp_path, "srv-w1", "u2", "b.example.com", 2, RouteOptions()) is True
    # Another agent's routes in the same directory, one from this agent's previous id,
    # and older-form files: of these, only the old id's and the named legacy file go.
    assert write_route(tmp_path, "srv-w2", "u1", "c.example.com", 3, RouteOptions()) is True
    assert write_route(tmp_path, "srv-old", "u2", "b.example.com", 4, RouteOptions()) is True
    for name in ("other.yaml", "clawfleet-u2.yaml", "clawfleet-u9.yaml"):
        (tmp_path / name).write_text("{}")
    assert prune(tmp_path, "srv-w1", {"u2"}, stale_workers=["srv-old"], legacy=["u2"]) == {"u1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "clawfleet-u1@srv-w2.yaml",
        "clawfleet-u2@srv-w1.yaml",
        "clawfleet-u9.yaml",
        "other.yaml",
    ]


@pytest.mark.parametrize(
    ("interval", "healths", "expected"),
    [
        (10.0, [], 10.0),
        (10.0, ["healthy", "none"], 10.0),
        (10.0, ["healthy", "starting"], 1.0),  # a start: heard within a second
        (50.0, ["starting"], 5.0),  # a big fleet's stretched interval stays a budget
        (0.5, ["starting"], 0.5),  # never slower than the interval itself
        (10.0, ["unhealthy"], 10.0),  # past its allowance: nothing to hurry for
    ],
)
def test_heartbeats_come_sooner_while_a_container_starts(
    interval: float, healths: list[str], expected: float
) -> None:
    beat = Heartbeat(
        agent_version="0.1.0",
        applied_generation=1,
        resources=Resources(cpus=2, memory_mb=4096, disk_gb=40),
        containers=[ContainerReport(f"u{i}", "running", h) for i, h in enumerate(healths)],
    )
    assert next_beat(interval, beat) == expected


@pytest.mark.parametrize(
    ("interval", "retry", "expected"),
    [
        (30.0, None, 30.0),  # nothing failed: the interval
        (30.0, 2.0, 2.0),  # a failed user due in 2 s: a pass then
        (30.0, 60.0, 30.0),  # due after the interval: the interval
        (30.0, 0.0, MIN_PASS),  # due now (or overdue): never a spinning loop
        (0.2, 5.0, 0.2),  # a short interval stays the bound
    ],
)
def test_a_pass_comes_when_a_failed_user_is_due(
    interval: float, retry: float | None, expected: float
) -> None:
    assert next_pass(interval, retry) == expected


@pytest.mark.parametrize(
    ("cpus", "limit", "expected"),
    [
        (0.5, False, {"cpu_shares": 512}),
        (2, False, {"cpu_shares": 2048}),
        (0.001, False, {"cpu_shares": 2}),  # Docker's minimum weight
        (0.5, True, {"nano_cpus": 500_000_000}),
        (1.25, True, {"nano_cpus": 1_250_000_000}),
    ],
)
def test_cpus_are_a_weight_unless_the_plan_caps_them(
    cpus: float, limit: bool, expected: dict[str, int]
) -> None:
    resources = ResourceSpec(memory_mb=64, cpus=cpus, pids=64, cpu_limit=limit)
    assert cpu_options(resources) == expected


@pytest.mark.parametrize("gate", [None, Gate("X-Clawfleet-User")])
def test_local_demo_client_address_comes_first_on_the_main_router(gate: Gate | None) -> None:
    """The router claims TRAEFIK_CLIENT_ADDRESS before anything else runs, so forward
    auth and the tenant both see it; a route without the option claims nothing."""
    name = "clawfleet-u1-srv-w1"
    options = RouteOptions(("web",), False, client_address="192.0.2.255")
    doc = json.loads(render("srv-w1", "u1", "alice.example.com", 1, options, gate))
    router = doc["http"]["routers"][name]
    assert router["middlewares"][0] == f"{name}-client"
    assert len(router["middlewares"]) == (3 if gate else 1)
    claimed = doc["http"]["middlewares"][f"{name}-client"]["headers"]["customRequestHeaders"]
    assert claimed == {"X-Forwarded-For": "192.0.2.255"}
    plain = json.loads(render("srv-w1", "u1", "alice.example.com", 1, RouteOptions(), gate))
    assert "X-Forwarded-For" not in json.dumps(plain)
    with pytest.raises(ValueError):
        render("srv-w1", "u1", "a.example.com", 1, RouteOptions(client_address="1.2.3.4\nX: y"))


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("", True),
        ("192.0.2.255", True),
        ("2001:db8::1", True),
        ("192.0.2.255 ", True),
        ("127.0.0.1", False),
        ("::1", False),
        ("host.example", False),
    ],
)
def test_client_address_setting(value: str, ok: bool) -> None:
    env = {"CONTROL_URL": "http://x", "TRAEFIK_CLIENT_ADDRESS": value}
    if ok:
        assert load_settings(env).traefik_client_address == value.strip()
    else:
        with pytest.raises(ConfigError, match="TRAEFIK_CLIENT_ADDRESS"):
            load_settings(env)


@pytest.mark.parametrize(
    ("listing", "expected"),
    [
        ("-N DOCKER-USER\n-A DOCKER-USER -j RETURN\n", (None, 0)),
        (
            "-N DOCKER-USER\n-A DOCKER-USER -d 169.254.169.254/32 -j REJECT --reject-with "
            "icmp-port-unreachable\n-A DOCKER-USER -j RETURN\n",
            (0, 1),
        ),
        (
            "-N DOCKER-USER\n-A DOCKER-USER -j RETURN\n-A DOCKER-USER -d 169.254.169.254/32 -j REJECT\n",
            (1, 0),
        ),
        ("-N DOCKER-USER\n", (None, None)),
    ],
)
def test_rule_position(listing: str, expected: tuple[int | None, int | None]) -> None:
    assert rule_position(listing) == expected


@pytest.mark.parametrize(
    ("start_seconds", "default", "gate"),
    [(0, 60.0, 60.0), (120, 60.0, 120.0), (5, 60.0, 5.0), (0, 20.0, 20.0)],
)
def test_health_gate_is_the_profiles_allowance_when_stated(
    start_seconds: int, default: float, gate: float
) -> None:
    spec = HealthSpec(path="/healthz", port=18789, start_seconds=start_seconds)
    assert health.gate_for(spec, default) == gate


async def test_a_docker_call_that_ends_as_its_caller_is_cancelled_still_cancels_it() -> None:
    """asyncio.wait_for on Python 3.11 returns the result when the inner call is done as
    the cancel arrives, so the cancelled task ran on: a stopping agent's reconcile loop
    then slept a whole interval. Here the cancel reaches the loop just before the call's
    result does (the call asks for it from its thread); the task must end cancelled."""
    runtime = DockerRuntime(None)
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[str]] = []

    def call() -> str:
        loop.call_soon_threadsafe(tasks[0].cancel)
        return "finished"

    try:
        tasks.append(asyncio.create_task(runtime._run(call)))
        with pytest.raises(asyncio.CancelledError):
            await tasks[0]
    finally:
        runtime.close()


@pytest.mark.parametrize(
    ("since", "ahead"),
    [
        (0.0, True),  # just failed: the next pass comes when its backoff ends
        (1.0, True),  # still ahead
        (20.0, False),  # due already: the pass just run retried it, or it is stale
    ],
)
def test_only_a_failure_still_ahead_brings_the_next_pass_forward(since: float, ahead: bool) -> None:
    """A stale failure (its user started by a later Start, or its create skipped) left
    due must not make the reconcile loop run every MIN_PASS for good."""
    rec = Reconciler(
        DockerRuntime(None), MetadataBlock(["iptables"]), ReconcilerOptions(backoff_base=4)
    )
    try:
        assert rec.next_retry() is None  # nothing failed
        rec._fail(make_spec("alice", "img"), "device not found")
        retry_at = rec._failures["alice"].retry_at  # 2-4 s away: backoff with jitter
        got = rec.next_retry(now=retry_at - 4 + since)
        assert (got is not None) is ahead
        if got is not None:
            assert got == pytest.approx(4 - since)
    finally:
        rec.runtime.close()
