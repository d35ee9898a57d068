"""OpenClaw gateway footprint: cold start-up time, idle and peak memory, behaviour under
memory limits. Figures for docs/benchmarks.md and for sizing the default plan.

Every run starts the real image (tenant.openclaw.build; built first if missing) the way
a tenant runs: uid 1000, a new empty named volume at /home/node/.openclaw, read-only root
fs, tmpfs /tmp, OPENCLAW_GATEWAY_TOKEN, the image's default command. Per run:
- start-up: from `docker run` (create + start) to the first 200 from /healthz, polled
  every 0.1 s;
- idle, after --settle seconds: the container's cgroup memory (usage, and anon memory,
  which excludes page cache), and VmRSS of each process in the container (/proc);
- peak: the cgroup's high-water mark (v1 memory.max_usage_in_bytes, v2 memory.peak) and
  each process's VmHWM.
Then, per memory limit (--limits, MB), one run with `--memory=<limit>` (no swap) and
NODE_OPTIONS=--max-old-space-size=<75 % of limit>, polled for --hold seconds: does it stay
healthy, was it OOM-killed; and per --bare-limits, the same without NODE_OPTIONS (does V8
size its heap from the cgroup limit by itself?).
Prints a table on stderr and one JSON line on stdout. Removes every container and volume
it created.
Usage: .venv/bin/python bench/openclaw_gateway.py [--runs 5] [--settle 20]
       [--limits 1024,2048] [--bare-limits 1024] [--hold 60]
"""

from __future__ import annotations

import argparse
import http.client
import json
import secrets
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402
from docker.models.containers import Container  # noqa: E402

from tenant.openclaw import build  # noqa: E402

STATE = "/home/node/.openclaw"
LABELS = {"clawfleet.bench": "openclaw-gateway"}
MB = 1024 * 1024


def healthz(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        return response.status == 200 and json.loads(response.read()).get("ok") is True
    except (OSError, http.client.HTTPException, ValueError):
        return False
    finally:
        conn.close()


def start(
    client: docker.DockerClient, image: str, limit_mb: int | None, node_options: bool
) -> tuple[Container, Any, int, float]:
    name = f"clawfleet-bench-openclaw-{uuid.uuid4().hex[:8]}"
    volume = client.volumes.create(name, labels=LABELS)
    env = {"OPENCLAW_GATEWAY_TOKEN": secrets.token_urlsafe(32)}
    extra: dict[str, Any] = {}
    if limit_mb is not None:
        if node_options:
            env["NODE_OPTIONS"] = f"--max-old-space-size={limit_mb * 3 // 4}"
        extra = {"mem_limit": f"{limit_mb}m", "memswap_limit": f"{limit_mb}m"}
    started = time.monotonic()
    container = client.containers.run(
        image,
        name=name,
        detach=True,
        user="1000:1000",
        read_only=True,
        tmpfs={"/tmp": "size=256m"},  # noqa: S108 (the container's /tmp, a tmpfs)
        volumes={volume.name: {"bind": STATE, "mode": "rw"}},
        environment=env,
        ports={"18789/tcp": ("127.0.0.1", None)},
        labels=LABELS,
        **extra,
    )
    container.reload()
    port = int(container.ports["18789/tcp"][0]["HostPort"])
    deadline = started + 300
    while not healthz(port):
        container.reload()
        if container.status != "running" or time.monotonic() > deadline:
            logs = container.logs(tail=20).decode(errors="replace")
            raise RuntimeError(f"gateway not healthy ({container.status}):\n{logs}")
        time.sleep(0.1)
    return container, volume, port, time.monotonic() - started


def cgroup_dir(pid: int) -> tuple[Path, int]:
    """The container's memory cgroup directory and the cgroup version."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/"), 1
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return Path("/sys/fs/cgroup") / line[3:].lstrip("/"), 2
    raise RuntimeError(f"no memory cgroup for pid {pid}")


def cgroup_memory(pid: int) -> dict[str, float]:
    directory, version = cgroup_dir(pid)
    stat = dict(
        (key, int(value))
        for key, value in (
            line.split() for line in (directory / "memory.stat").read_text().splitlines()
        )
    )
    if version == 1:
        usage = int((directory / "memory.usage_in_bytes").read_text())
        peak = int((directory / "memory.max_usage_in_bytes").read_text())
        anon = stat.get("total_rss", stat.get("rss", 0))
        inactive_file = stat.get("total_inactive_file", 0)
    else:
        usage = int((directory / "memory.current").read_text())
        peak_file = directory / "memory.peak"
        peak = int(peak_file.read_text()) if peak_file.exists() else -1
        anon = stat.get("anon", 0)
        inactive_file = stat.get("inactive_file", 0)
    # `docker stats` shows usage minus inactive file cache.
    return {
        "usage_mb": usage / MB,
        "stats_mb": (usage - inactive_file) / MB,
        "anon_mb": anon / MB,
        "peak_mb": peak / MB if peak >= 0 else -1.0,
    }


def processes(pid: int) -> list[dict[str, Any]]:
    """The container's processes (init pid and its descendants), VmRSS and VmHWM."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        found.append(
            {
                "pid": current,
                "name": fields["Name"].strip(),
                "rss_mb": int(fields.get("VmRSS", "0 kB").split()[0]) / 1024,
                "hwm_mb": int(fields.get("VmHWM", "0 kB").split()[0]) / 1024,
            }
        )
        todo.extend(int(child) for child in children)
    return found


def measure(
    client: docker.DockerClient,
    image: str,
    settle: float,
    limit_mb: int | None,
    hold: float,
    node_options: bool = True,
) -> dict[str, Any]:
    container, volume, port, startup = start(client, image, limit_mb, node_options)
    try:
        container.reload()
        pid = int(container.attrs["State"]["Pid"])
        time.sleep(settle)  # idle means "after start-up settled": a wall-clock window by design
        result: dict[str, Any] = {
            "limit_mb": limit_mb,
            "node_options": node_options and limit_mb is not None,
            "startup_s": round(startup, 2),
            "cgroup": {k: round(v, 1) for k, v in cgroup_memory(pid).items()},
            "processes": processes(pid),
        }
        if hold > 0:
            healthy_polls = total_polls = 0
            end = time.monotonic() + hold
            while time.monotonic() < end:
                total_polls += 1
                healthy_polls += healthz(port)
                time.sleep(2)
            container.reload()
            result["hold_s"] = hold
            result["healthy_polls"] = f"{healthy_polls}/{total_polls}"
            result["oom_killed"] = bool(container.attrs["State"]["OOMKilled"])
            result["status"] = container.status
            result["cgroup_after_hold"] = {k: round(v, 1) for k, v in cgroup_memory(pid).items()}
        return result
    finally:
        container.remove(force=True)
        volume.remove(force=True)


def gateway_process(run: dict[str, Any]) -> dict[str, Any]:
    return max(run["processes"], key=lambda p: p["rss_mb"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--settle", type=float, default=20.0)
    parser.add_argument("--limits", default="1024,2048", help="MB, comma-separated; empty for none")
    parser.add_argument("--bare-limits", default="1024", help="MB, run without NODE_OPTIONS")
    parser.add_argument("--hold", type=float, default=60.0)
    args = parser.parse_args()
    image = build.ensure_image()
    client = docker.from_env(version="auto", timeout=120)
    try:
        cold = [measure(client, image, args.settle, None, 0) for _ in range(args.runs)]
        limits = [int(x) for x in args.limits.split(",") if x.strip()]
        limited = [measure(client, image, args.settle, limit, args.hold) for limit in limits]
        bare = [int(x) for x in args.bare_limits.split(",") if x.strip()]
        limited += [measure(client, image, args.settle, mb, args.hold, False) for mb in bare]
    finally:
        client.close()
    startups = [run["startup_s"] for run in cold]
    summary = {
        "image": image,
        "runs": args.runs,
        "startup_median_s": round(statistics.median(startups), 2),
        "startup_s": startups,
        "idle_stats_mb_median": round(statistics.median(r["cgroup"]["stats_mb"] for r in cold), 1),
        "idle_anon_mb_median": round(statistics.median(r["cgroup"]["anon_mb"] for r in cold), 1),
        "idle_gateway_rss_mb_median": round(
            statistics.median(gateway_process(r)["rss_mb"] for r in cold), 1
        ),
        "peak_cgroup_mb_max": round(max(r["cgroup"]["peak_mb"] for r in cold), 1),
        "peak_gateway_hwm_mb_max": round(max(gateway_process(r)["hwm_mb"] for r in cold), 1),
        "cold": cold,
        "limited": limited,
    }
    for run in cold + limited:
        proc = gateway_process(run)
        print(
            f"limit={run['limit_mb']} node_options={run['node_options']} startup={run['startup_s']}s cgroup={run['cgroup']} "
            f"gateway={proc['name']} rss={proc['rss_mb']:.0f}MB hwm={proc['hwm_mb']:.0f}MB "
            + (f"held={run['healthy_polls']} oom={run['oom_killed']}" if "hold_s" in run else ""),
            file=sys.stderr,
        )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
