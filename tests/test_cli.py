"""The `clawfleet` CLI against the real control plane (and, for simulate-payment, a
local receiver that verifies signatures with the real `stripe` library).

`main` is blocking, so tests run it in a thread: the app under test shares this
event loop and must keep serving while the CLI waits for it.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import stripe
from aiohttp import web

from control.billing.decode import decode
from control.cli import config, main
from control.plans import parse_plans
from tests.fixtures import ControlPlane, free_port
from tests.test_protocol import registered
from tests.test_stripe_e2e import inbox_idle
from tests.worker import FakeWorker

WEBHOOK_SECRET = "whsec_cli_test_" + "e" * 32
PLANS = json.dumps(
    {
        "pro": {
            "memory_mb": 2048,
            "cpus": 1,
            "pids": 512,
            "disk_gb": 10,
            "stripe_price_ids": ["price_pro_monthly", "price_pro_yearly"],
        }
    }
)
DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
ENV_VARS = ("CLAWFLEET_URL", "ADMIN_TOKEN", "CLAWFLEET_TIMEOUT", "STRIPE_WEBHOOK_SECRET", "PLANS")


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The operator's shell must not leak in, and ./data/admin_token is looked up
    # relative to the working directory (the repo has one from `make run`).
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def as_operator(control: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> ControlPlane:
    monkeypatch.setenv("CLAWFLEET_URL", control.url)
    monkeypatch.setenv("ADMIN_TOKEN", control.admin_token)
    return control


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    code = await asyncio.wait_for(asyncio.to_thread(main, list(argv)), timeout=30)
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def parse_table(text: str) -> list[dict[str, str]]:
    """Rows of an aligned table, cut at the header's column starts, so a misaligned
    cell shows up as a wrong value."""
    lines = text.splitlines()
    header = lines[0]
    spans = [(m.start(), m.group()) for m in re.finditer(r"\S+(?: \S+)*", header)]
    rows = []
    for line in lines[1:]:
        if not line.strip():
            break
        cells = {}
        for i, (start, name) in enumerate(spans):
            end = spans[i + 1][0] if i + 1 < len(spans) else len(line)
            if start > 0:
                assert line[start - 1] == " ", f"column {name} misaligned in {line!r}"
            cells[name] = line[start:end].strip()
        rows.append(cells)
    return rows


async def join_token(control: ControlPlane) -> str:
    status, body = await control.admin("POST", "/v1/join-tokens")
    assert status == 201, body
    return str(body["token"])


async def worker(control: ControlPlane, hostname: str) -> FakeWorker:
    w = FakeWorker.with_token(control.url, control.session, await join_token(control))
    reply = await w.register(hostname)
    assert reply.status == 201, reply.body
    return w


async def fleet(control: ControlPlane) -> tuple[FakeWorker, FakeWorker]:
    """Both cordoned: w1 heartbeating and holding alice, w2 empty; bob pending."""
    w1 = await worker(control, "w1")
    w2 = await worker(control, "w2")
    assert (await w1.heartbeat()).status == 200
    await control.admin("POST", f"/v1/servers/{w2.key_id}/cordon")
    status, body = await control.admin(
        "POST", "/v1/users", {"user_id": "alice", "subdomain": "alice"}
    )
    assert status == 201 and body["server_id"] == w1.key_id, body
    await control.admin("POST", f"/v1/servers/{w1.key_id}/cordon")
    status, body = await control.admin("POST", "/v1/users", {"user_id": "bob", "subdomain": "bob"})
    assert status == 201 and body["state"] == "pending", body
    return w1, w2


def without_ages(body: dict[str, Any]) -> dict[str, Any]:
    # The heartbeat age grows between two reads; everything else must be identical.
    return {"servers": [{**s, "last_heartbeat_age": None} for s in body["servers"]]}


# --- servers ------------------------------------------------------------------------
async def test_servers_table_shows_status_heartbeat_and_capacity(
    as_operator: ControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    control = as_operator
    w1, w2 = await fleet(control)
    run = await cli(capsys, "servers")
    assert run.code == 0, run.err
    rows = {r["ID"]: r for r in parse_table(run.out)}
    assert set(rows) == {w1.key_id, w2.key_id}
    _, api = await control.admin("GET", "/v1/servers")
    for server in api["servers"]:
        row = rows[server["id"]]
        assert row["STATUS"] == server["status"]
        assert row["NAME"] == server["name"]
    # 8192 MB minus the 512 MB system reserve; alice's default plan uses 1024 / 0.5.
    users_on_w1 = int(rows[w1.key_id]["USERS"])
    assert rows[w1.key_id]["MEM MB"] == f"{1024 * users_on_w1}/7680"
    assert rows[w2.key_id]["FLAGS"] == "cordoned"
    assert rows[w2.key_id]["MEM MB"] == "0/7680" and rows[w2.key_id]["CPUS"] == "0/3.75"
    assert re.fullmatch(r"\d+\.\ds", rows[w1.key_id]["HEARTBEAT"])
    assert rows[w1.key_id]["RUNNING"] == f"0/{users_on_w1}"


async def test_servers_json_is_the_api_json_with_the_option_anywhere(
    as_operator: ControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    control = as_operator
    await fleet(control)
    _, api = await control.admin("GET", "/v1/servers")
    for argv in (["--json", "servers"], ["servers", "--json"]):
        run = await cli(capsys, *argv)
        assert run.code == 0, run.err
        assert without_ages(json.loads(run.out)) == without_ages(api)


async def test_server_detail_and_unknown_server(
    as_operator: ControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    control = as_operator
    w1, _ = await fleet(control)
    run = await cli(capsys, "server", w1.key_id)
    assert run.code == 0, run.err
    assert w1.key_id in run.out
    containers = parse_table(run.out.split("\n\n", 1)[1])
    assert "alice" in {c["USER"] for c in containers}
    assert all(c["DESIRED"] == "yes" and c["STATE"] == "unknown" for c in containers)

    run = await cli(capsys, "server", "srv-nope")
    assert run.code == 1
    assert run.out == ""
    assert run.err.strip() == "clawfleet: not_found: no server srv-nope (HTTP 404)"


async def test_cordon_uncordon_drain_change_the_server(
    as_operator: ControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    control = as_operator
    w = await worker(control, "w1")

    async def flags() -> tuple[bool, bool]:
        _, body = await control.admin("GET", f"/v1/servers/{w.key_id}")
        return body["cordoned"], body["draining"]

    run = await cli(capsys, "cordon", w.key_id)
    assert run.code == 0, run.err
    assert parse_table(run.out)[0]["FLAGS"] == "cordoned"
    assert await flags() == (True, False)
    run = await cli(capsys, "uncordon", w.key_id)
    assert run.code == 0, run.err
    assert parse_table(run.out)[0]["FLAGS"] == "-"
    assert await flags() == (False, False)
    run = await cli(capsys, "drain", w.key_id, "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["draining"] is True
    assert (await flags())[1] is True
    run = await cli(capsys, "cordon", "srv-nope")
    assert run.code == 1 and "not_found" in run.err


# --- users --------------------------------------------------------------------------
async def test_users_table_and_json(
    as_operator: ControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    control = as_operator
    w1, _ = await fleet(control)
    _, api = await control.admin("GET", "/v1/users")
    run = await cli(capsys, "users")
    assert run.code == 0, run.err
    rows = {r["USER"]: r for r in parse_table(run.out)}
    assert set(rows) == {"alice", "bob"}
    for user in api["users"]:
        row = rows[user["user_id"]]
        assert row["STATE"] == user["state"]
        assert row["SERVER"] == (user["server_id"] or "-")
        assert row["PLAN"] == "default" and row["SUBDOMAIN"] == user["subdomain"]
    assert rows["alice"]["SERVER"] == w1.key_id

    run = await cli(capsys, "users", "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out) == api

    run = await cli(capsys, "user", "alice")
    assert run.code == 0, run.err
    details = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in run.out.splitlines())
    assert details["user"] == "alice" and details["server"] == w1.key_id
    assert details["state"] == api["users"][0]["state"]

    run = await cli(capsys, "user", "nobody")
    assert run.code == 1 and "not_found" in run.err and "no user nobody" in run.err


async def test_user_actions_suspend_resume_move_access_rotate(
    as_operator: ControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    control = as_operator
    _, w2 = await fleet(control)

    run = await cli(capsys, "suspend", "alice")
    assert run.code == 0, run.err
    assert parse_table(run.out)[0]["STATE"] == "suspended"
    _, alice = await control.admin("GET", "/v1/users/alice")
    assert alice["state"] == "suspended"
    run = await cli(capsys, "resume", "alice")
    assert run.code == 0, run.err
    _, alice = await control.admin("GET", "/v1/users/alice")
    assert alice["state"] != "suspended" and parse_table(run.out)[0]["STATE"] == alice["state"]

    run = await cli(capsys, "access", "alice")
    assert run.code == 0, run.err
    _, access = await control.admin("GET", "/v1/users/alice/access")
    assert run.out.split() == ["url", access["url"], "token", access["token"]]
    run = await cli(capsys, "rotate-token", "alice", "--json")
    assert run.code == 0, run.err
    rotated = json.loads(run.out)
    assert rotated["token"] != access["token"]
    assert (await control.admin("GET", "/v1/users/alice/access"))[1] == rotated

    run = await cli(capsys, "move", "alice", "--to", "srv-nope")
    assert run.code == 1 and "target_unavailable" in run.err
    _, alice = await control.admin("GET", "/v1/users/alice")
    await control.admin("POST", f"/v1/servers/{w2.key_id}/uncordon")
    run = await cli(capsys, "move", "alice", "--to", w2.key_id)
    assert run.code == 0, run.err
    _, moved = await control.admin("GET", "/v1/users/alice")
    assert moved["server_id"] == w2.key_id and moved["moving_from"] == alice["server_id"]
    assert parse_table(run.out)[0]["SERVER"] == w2.key_id


# --- events -------------------------------------------------------------------------
async def test_events_table_limit_before_and_json(
    as_operator: ControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    control = as_operator
    await fleet(control)
    # Background loops (the autoscaler) may log meanwhile: pin a window with `before`.
    _, newest = await control.admin("GET", "/v1/events?limit=1")
    before = newest["events"][0]["id"] + 1
    _, api = await control.admin("GET", f"/v1/events?limit=3&before={before}")
    assert len(api["events"]) == 3
    run = await cli(capsys, "events", "--limit", "3", "--before", str(before))
    assert run.code == 0, run.err
    rows = parse_table(run.out)
    assert [int(r["ID"]) for r in rows] == [e["id"] for e in api["events"]]
    assert [r["KIND"] for r in rows] == [e["kind"] for e in api["events"]]
    assert [r["MESSAGE"] for r in rows] == [e["message"] for e in api["events"]]
    assert [r["AT"] for r in rows] == [e["at"] for e in api["events"]]

    run = await cli(capsys, "events", "--json", "--limit", "3", "--before", str(before))
    assert run.code == 0, run.err
    assert json.loads(run.out) == api

    oldest = api["events"][-1]["id"]
    run = await cli(capsys, "events", "--before", str(oldest), "--json")
    assert run.code == 0, run.err
    older = json.loads(run.out)["events"]
    assert older and all(e["id"] < oldest for e in older)
    # Without options: newest first, at most 50.
    run = await cli(capsys, "events")
    ids = [int(r["ID"]) for r in parse_table(run.out)]
    assert run.code == 0 and ids == sorted(ids, reverse=True) and 3 < len(ids) <= 50


# --- join tokens --------------------------------------------------------------------
async def test_join_token_registers_a_worker(
    as_operator: ControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    control = as_operator
    run = await cli(capsys, "join-token")
    assert run.code == 0, run.err
    token = run.out.strip()
    assert "\n" not in token and "expires at" in run.err
    w = FakeWorker.with_token(control.url, control.session, token)
    reply = await w.register("joined")
    assert reply.status == 201, reply.body
    _, body = await control.admin("GET", f"/v1/servers/{w.key_id}")
    assert body["hostname"] == "joined"

    run = await cli(capsys, "join-token", "--ttl", "120", "--json")
    assert run.code == 0, run.err
    assert set(json.loads(run.out)) == {"token", "expires_at"}
    # The API's own validation comes back as an API error, with its code.
    run = await cli(capsys, "join-token", "--ttl", "59")
    assert run.code == 1 and "bad_request" in run.err and "ttl_seconds" in run.err


# --- credentials, reachability, usage ------------------------------------------------
async def test_wrong_token_is_exit_4_and_never_printed(
    control: ControlPlane,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    wrong = "wrong-token-" + "z" * 30
    monkeypatch.setenv("CLAWFLEET_URL", control.url)
    monkeypatch.setenv("ADMIN_TOKEN", wrong)
    run = await cli(capsys, "servers")
    assert run.code == 4
    assert run.err.strip() == "clawfleet: the control plane refused ADMIN_TOKEN (401)"
    assert wrong not in run.out + run.err and "zzzz" not in run.out + run.err
    (tmp_path / "wrong").write_text(wrong + "\n")
    run = await cli(capsys, "--token-file", str(tmp_path / "wrong"), "users")
    assert run.code == 4 and wrong not in run.out + run.err


async def test_token_sources_and_their_order(
    control: ControlPlane,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("CLAWFLEET_URL", control.url)
    run = await cli(capsys, "servers")
    assert run.code == 2 and "ADMIN_TOKEN" in run.err and "data/admin_token" in run.err
    # `make run` leaves it in ./data/admin_token: used when nothing else is given.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "admin_token").write_text(control.admin_token + "\n")
    run = await cli(capsys, "servers")
    assert run.code == 0, run.err
    # ADMIN_TOKEN beats the default file, --token-file beats ADMIN_TOKEN.
    monkeypatch.setenv("ADMIN_TOKEN", "wrong-" + "y" * 40)
    assert (await cli(capsys, "servers")).code == 4
    run = await cli(capsys, "servers", "--token-file", str(tmp_path / "data" / "admin_token"))
    assert run.code == 0, run.err
    run = await cli(capsys, "servers", "--token-file", str(tmp_path / "missing"))
    assert run.code == 2 and "cannot read the admin token" in run.err


async def test_unreachable_control_plane_is_exit_3(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADMIN_TOKEN", "t" * 40)
    url = f"http://127.0.0.1:{free_port()}"  # bound then closed: nothing listens
    run = await cli(capsys, "--url", url, "servers")
    assert run.code == 3
    assert run.err.startswith(f"clawfleet: cannot reach the control plane at {url}: ")


async def test_a_silent_control_plane_times_out_as_exit_3(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel accepts the connection into the backlog; nobody ever answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("ADMIN_TOKEN", "t" * 40)
        monkeypatch.setenv("CLAWFLEET_TIMEOUT", "0.5")  # what bounds the wait: see below
        run = await cli(capsys, "--url", url, "servers")
    assert run.code == 3
    assert run.err.strip() == f"clawfleet: cannot reach the control plane at {url}: timed out"


@pytest.mark.parametrize(
    ("raw", "seconds"), [(None, 10.0), ("", 10.0), ("0.5", 0.5), (" 2 ", 2.0), ("3600", 3600.0)]
)
def test_each_request_is_bounded_by_clawfleet_timeout(
    monkeypatch: pytest.MonkeyPatch, raw: str | None, seconds: float
) -> None:
    if raw is None:
        monkeypatch.delenv("CLAWFLEET_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("CLAWFLEET_TIMEOUT", raw)
    assert config.timeout() == seconds


async def test_redirects_are_not_followed_and_foreign_errors_are_exit_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hits: list[str | None] = []

    async def elsewhere(request: web.Request) -> web.Response:
        hits.append(request.headers.get("Authorization"))
        return web.json_response({"servers": []})

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    async def gateway(request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>Bad Gateway</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/v1/servers", moved)
    app.router.add_get("/elsewhere", elsewhere)
    app.router.add_get("/v1/users", gateway)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        monkeypatch.setenv("CLAWFLEET_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("ADMIN_TOKEN", "t" * 40)
        run = await cli(capsys, "servers")
        assert run.code == 1 and "redirected (HTTP 302) to /elsewhere" in run.err
        assert hits == []  # the bearer token went nowhere else
        run = await cli(capsys, "users")
        assert run.code == 1
        assert run.err.strip() == "clawfleet: http_502: <html>Bad Gateway</html> (HTTP 502)"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        ([], {}, "COMMAND"),
        (["nope"], {}, "invalid choice"),
        (["server"], {}, "server"),
        (["events", "--limit", "abc"], {}, "positive integer"),
        (["events", "--limit", "0"], {}, "positive integer"),
        (["move", "alice", "--to"], {}, "--to"),
        (["servers", "--bogus"], {}, "unrecognized"),
        (["servers"], {"CLAWFLEET_URL": "ftp://127.0.0.1"}, "http(s)://"),
        (["servers"], {"CLAWFLEET_URL": "127.0.0.1:8080"}, "http(s)://"),
        (["servers"], {"CLAWFLEET_TIMEOUT": "soon"}, "CLAWFLEET_TIMEOUT"),
        (["servers"], {"ADMIN_TOKEN": "has space inside"}, "ADMIN_TOKEN"),
    ],
)
async def test_usage_and_configuration_errors_are_exit_2(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    env: dict[str, str],
    needle: str,
) -> None:
    # A closed port: a command that got as far as connecting would exit 3, not 2.
    monkeypatch.setenv("CLAWFLEET_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("ADMIN_TOKEN", "t" * 40)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    run = await cli(capsys, *argv)
    assert run.code == 2, run.err
    assert needle in run.err and run.out == ""
    assert "has space inside" not in run.err


async def test_help_documents_exit_codes_and_the_token_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = await cli(capsys, "--help")
    assert run.code == 0
    for text in ("exit codes:", "4  the control plane refused", "./data/admin_token", "make run"):
        assert text in run.out
    for command in ("servers", "drain", "join-token", "simulate-payment", "rotate-token"):
        assert command in run.out


async def test_runs_as_a_module_in_its_own_process(as_operator: ControlPlane) -> None:
    w = await worker(as_operator, "w1")
    env = {"CLAWFLEET_URL": as_operator.url, "ADMIN_TOKEN": as_operator.admin_token}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "control.cli",
        "servers",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    assert [r["ID"] for r in parse_table(out.decode())] == [w.key_id]


# --- simulate-payment -----------------------------------------------------------------
@dataclass
class Receiver:
    """Verifies each delivery as the control plane will: with the stripe library."""

    secret: str
    url: str = ""
    attempts: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        payload = await request.read()
        signature = request.headers.get("Stripe-Signature", "")
        try:
            event = stripe.Webhook.construct_event(payload, signature, self.secret)
        except stripe.SignatureVerificationError as exc:
            error = {"code": "bad_signature", "message": str(exc)}
            return web.json_response({"error": error}, status=400)
        assert event["id"] == json.loads(payload)["id"]
        self.events.append(json.loads(payload))
        self.headers.append(dict(request.headers))
        return web.json_response({"received": True, "duplicate": False})


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    got = Receiver(WEBHOOK_SECRET)
    app = web.Application()
    app.router.add_post("/v1/stripe/webhook", got.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    got.url = f"http://127.0.0.1:{port}"
    yield got
    await runner.cleanup()


async def test_simulate_payment_is_signed_as_stripe_signs_and_shaped_like_stripe(
    receiver: Receiver, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("PLANS", PLANS)
    # No ADMIN_TOKEN anywhere: the signature is the only credential a webhook needs.
    run = await cli(
        capsys, "--url", receiver.url, "simulate-payment", "Alice.Smith_01", "--plan", "pro"
    )
    now = time.time()
    assert run.code == 0, run.err
    assert [e["type"] for e in receiver.events] == [
        "checkout.session.completed",
        "customer.subscription.created",
    ]
    for event, headers in zip(receiver.events, receiver.headers, strict=True):
        match = re.fullmatch(r"t=(\d+),v1=([0-9a-f]{64})", headers["Stripe-Signature"])
        assert match and abs(int(match[1]) - now) < 10
        assert "Authorization" not in headers
        assert re.fullmatch(r"evt_sim_[0-9a-f]{8,}", event["id"]) and event["id"] in run.out
        assert event["object"] == "event" and abs(event["created"] - now) < 10
        # A signature made with any other secret is refused: the check above meant something.
        body = json.dumps(event, indent=2)
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(body, headers["Stripe-Signature"], "whsec_other")
    assert receiver.events[0]["id"] != receiver.events[1]["id"]

    session = receiver.events[0]["data"]["object"]
    sub = receiver.events[1]["data"]["object"]
    metadata = {"user_id": "Alice.Smith_01", "subdomain": "alice-smith-01"}
    assert session["object"] == "checkout.session" and session["mode"] == "subscription"
    assert session["client_reference_id"] == "Alice.Smith_01"
    assert session["metadata"] == metadata and DNS_LABEL.match(metadata["subdomain"])
    assert session["customer"].startswith("cus_sim_") and session["subscription"].startswith(
        "sub_sim_"
    )
    assert sub["object"] == "subscription" and sub["status"] == "active"
    assert sub["id"] == session["subscription"] and sub["customer"] == session["customer"]
    assert sub["metadata"] == metadata
    assert sub["items"]["data"][0]["price"]["id"] == "price_pro_monthly"
    assert sub["items"]["data"][0]["current_period_end"] > now

    # The control plane's own decoder reads what it needs from these events.
    facts = [decode(e) for e in receiver.events]
    assert facts[0] is not None and facts[1] is not None
    assert (facts[0].user_id, facts[0].subdomain) == ("Alice.Smith_01", "alice-smith-01")
    assert (facts[1].status, facts[1].price_id) == ("active", "price_pro_monthly")
    assert facts[1].user_id == "Alice.Smith_01"


async def test_simulate_payment_defaults_and_repeat(
    receiver: Receiver, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    run = await cli(capsys, "--url", receiver.url, "--json", "simulate-payment", "bob")
    assert run.code == 0, run.err
    summary = json.loads(run.out)
    # No PLANS here: the default plan has no Stripe price, so one naming the plan is sent.
    assert summary["price_id"] == "price_clawfleet_default"
    assert [d["event_id"] for d in summary["deliveries"]] == [e["id"] for e in receiver.events]
    assert receiver.events[1]["data"]["object"]["items"]["data"][0]["price"]["id"] == (
        "price_clawfleet_default"
    )
    # Again for the same user: fresh event ids, the same customer and subscription.
    run = await cli(capsys, "--url", receiver.url, "--json", "simulate-payment", "bob")
    again = json.loads(run.out)
    assert (again["customer"], again["subscription"]) == (
        summary["customer"],
        summary["subscription"],
    )
    assert len({e["id"] for e in receiver.events}) == 4


async def test_simulate_payment_refusals_and_configuration(
    receiver: Receiver,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./data/stripe_webhook_secret to fall back on
    run = await cli(capsys, "--url", receiver.url, "simulate-payment", "carol")
    assert run.code == 2 and "STRIPE_WEBHOOK_SECRET" in run.err
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_not_the_receivers_" + "f" * 20)
    run = await cli(capsys, "--url", receiver.url, "simulate-payment", "carol", "--plan", "Gold!")
    assert run.code == 2 and "--plan" in run.err
    monkeypatch.setenv("PLANS", "{not json")
    run = await cli(capsys, "--url", receiver.url, "simulate-payment", "carol")
    assert run.code == 2 and "PLANS" in run.err
    assert receiver.attempts == 0
    monkeypatch.delenv("PLANS")
    # A wrong secret: the receiver refuses, the CLI stops after the first event.
    run = await cli(capsys, "--url", receiver.url, "simulate-payment", "carol")
    assert run.code == 1 and "bad_signature" in run.err and "whsec_not" not in run.err
    assert receiver.attempts == 1 and receiver.events == []


async def test_simulate_payment_against_the_control_plane(
    control_factory: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    control: ControlPlane = control_factory(
        stripe_webhook_secret=WEBHOOK_SECRET, plans=parse_plans(PLANS)
    )
    await control.start()
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("PLANS", PLANS)
    run = await cli(capsys, "--url", control.url, "simulate-payment", "dora", "--plan", "pro")
    assert run.code == 0, run.err
    await inbox_idle(control)
    _, user = await control.admin("GET", "/v1/users/dora")
    assert user.get("billing_status") == "active", user
    assert user["plan"] == "pro" and user["subdomain"] == "dora" and user["error"] is None
    assert user["stripe_subscription_id"].startswith("sub_sim_")


async def test_simulate_payment_with_make_runs_secret_file_starts_a_default_user(
    control_factory: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The demo path: `make run` wrote data/stripe_webhook_secret; no PLANS at all."""
    control: ControlPlane = control_factory(stripe_webhook_secret=WEBHOOK_SECRET)
    await control.start()
    await registered(control)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "stripe_webhook_secret").write_text(WEBHOOK_SECRET + "\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET", raising=False)
    monkeypatch.delenv("PLANS", raising=False)
    run = await cli(capsys, "--url", control.url, "simulate-payment", "eve")
    assert run.code == 0, run.err
    await inbox_idle(control)
    _, eve = await control.admin("GET", "/v1/users/eve")
    assert eve["state"] == "provisioning" and eve["plan"] == "default" and eve["error"] is None
