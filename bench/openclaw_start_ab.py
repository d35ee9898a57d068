"""A/B of the OpenClaw gateway's cold start: interleaved pairs, the profile's real settings.

Each round starts variant A, then B, on a fresh state dir holding the profile's
trusted-proxy openclaw.json: uid 1000, read-only root, tmpfs /tmp, `--init`, 1024 MB,
CPU weight 512, NODE_OPTIONS=--max-old-space-size=768, the profile's command. Per start:
seconds from `docker run` to /healthz and to /startupz (polled every 0.1 s, the latter
with the X-Forwarded-For the agent's probe sends), and the container's CPU seconds at
/startupz (cgroup v1 cpuacct.usage). On a shared machine the wall times follow the CPU
left over (±3 s between neighbours); the CPU seconds are the steadier figure.
A variant is an image tag, optionally followed by `+NAME=VALUE` environment overrides.
Prints one line per start and the means on stderr, the runs as JSON on stdout.
Usage (as root, for the cgroup and the state dir's owner):
  .venv/bin/python bench/openclaw_start_ab.py OLD_TAG NEW_TAG [--rounds 4]
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = {
    "gateway": {
        "mode": "local",
        "port": 18789,
        "bind": "lan",
        "auth": {
            "mode": "trusted-proxy",
            "trustedProxy": {
                "userHeader": "X-Clawfleet-User",
                "deviceAutoApprove": {"enabled": True},
            },
        },
        "trustedProxies": [],  # the bridge's gateway, filled in at start
        "controlUi": {"allowedOrigins": ["http://alice.example.test"]},
    }
}
BRIDGE_NAME = '{{index .Options "com.docker.network.bridge.name"}}'
ARGV = ["openclaw", "gateway", "--bind", "lan", "--port", "18789", "--allow-unconfigured"]


def status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path, headers={"X-Forwarded-For": "192.0.2.1"})
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout


def state_dir(root: Path, name: str, proxy: str) -> Path:
    directory = root / name
    directory.mkdir(mode=0o700)
    config = json.loads(json.dumps(CONFIG))
    config["gateway"]["trustedProxies"] = [proxy]
    (directory / "openclaw.json").write_text(json.dumps(config))
    shutil.chown(directory / "openclaw.json", 1000, 1000)
    shutil.chown(directory, 1000, 1000)
    return directory


def start(variant: str, state: Path) -> dict[str, float]:
    image, *overrides = variant.split("+")
    env = ["NODE_OPTIONS=--max-old-space-size=768", "OPENCLAW_DISABLE_BONJOUR=1", *overrides]
    tmpfs = "/tmp"  # noqa: S108 (the container's /tmp, a tmpfs)
    run = ["run", "-d", "--user", "1000:1000", "--read-only", "--tmpfs", tmpfs, "--init"]
    run += ["-m", "1024m", "--cpu-shares", "512", "-p", "127.0.0.1::18789"]
    run += [x for e in env for x in ("-e", e)] + ["-v", f"{state}:/home/node/.openclaw"]
    t0 = time.monotonic()
    cid = docker(*run, image, *ARGV).strip()
    try:
        port = int(docker("port", cid, "18789").split(":")[-1])
        cpu = Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage")
        result: dict[str, float] = {}
        while time.monotonic() - t0 < 300:
            if "healthz_s" not in result and status(port, "/healthz") == 200:
                result["healthz_s"] = round(time.monotonic() - t0, 2)
            if "healthz_s" in result and status(port, "/startupz") == 200:
                result["startupz_s"] = round(time.monotonic() - t0, 2)
                result["cpu_s"] = round(int(cpu.read_text()) / 1e9, 2)
                return result
            time.sleep(0.1)
        raise RuntimeError(f"{variant}: no /startupz within 300 s")
    finally:
        docker("rm", "-f", cid)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    # Requests from the host reach a published port from the default bridge's address.
    bridge = docker("network", "inspect", "bridge", "-f", BRIDGE_NAME).strip()
    ip = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", bridge], capture_output=True)
    proxy = ip.stdout.decode().split()[3].split("/")[0]
    runs: dict[str, list[dict[str, float]]] = {args.a: [], args.b: []}
    with tempfile.TemporaryDirectory(prefix="openclaw-ab-") as tmp:
        for i in range(args.rounds):
            for label, variant in (("a", args.a), ("b", args.b)):
                got = start(variant, state_dir(Path(tmp), f"{label}{i}", proxy))
                runs[variant].append(got)
                print(f"round {i} {label}: {got}", file=sys.stderr, flush=True)
    for variant, results in runs.items():
        means = {k: round(statistics.mean(r[k] for r in results), 2) for k in results[0]}
        print(f"mean {variant}: {means}", file=sys.stderr)
    print(json.dumps(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
