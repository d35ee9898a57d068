"""Payment to "the customer's browser shows the Control UI", on the README's demo.

One `make run` (tests/make_run.py: the control plane as a process on its defaults, the
local provider, its Traefik on 127.0.0.1, the real OpenClaw image, already built and
cached), then --runs times, one customer at a time:
- t0: `clawfleet simulate-payment <user>` starts (a signed checkout + subscription, as
  Stripe sends them);
- running: the admin API says `running` (polled every 0.1 s): the gateway answered its
  health check on the worker;
- shown: a new Chromium context opens the sign-in link (issued at `running`) and the
  Control UI's WebSocket says hello-ok and the page shows "Connected";
- memory: the container's memory usage (cgroup, as `docker stats` shows it) and the
  gateway's RSS, read right after `shown`, with the browser still connected, under the
  default plan's limit.
Then the user is deleted and its container removed before the next run, so every run
starts the same way. Prints a table on stderr and one JSON line on stdout.
Usage: .venv/bin/python bench/payment_to_control_ui.py [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from tests.agent.conftest import purge_user  # noqa: E402
from tests.agent.test_openclaw_e2e import ControlUi  # noqa: E402
from tests.dashboard.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.make_run import MakeRun  # noqa: E402

MB = 1024 * 1024


async def admin(run: MakeRun, http: aiohttp.ClientSession, method: str, path: str) -> Any:
    token = (run.home / "data" / "admin_token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    async with http.request(method, run.url + path, headers=headers) as response:
        return await response.json()


async def until_running(run: MakeRun, http: aiohttp.ClientSession, user: str) -> None:
    deadline = time.monotonic() + 240
    while (await admin(run, http, "GET", f"/v1/users/{user}")).get("state") != "running":
        if time.monotonic() > deadline:
            raise TimeoutError(f"{user} not running after 240 s")
        await asyncio.sleep(0.1)


def memory(run: MakeRun, user: str) -> tuple[float, float]:
    """(cgroup usage as docker stats shows it, gateway RSS) in MB."""
    [container] = run.containers(user)
    stats = container.stats(stream=False)["memory_stats"]
    usage = stats["usage"] - stats.get("stats", {}).get("total_inactive_file", 0)
    _, out = container.exec_run(["sh", "-c", "grep VmRSS /proc/[0-9]*/status"])
    rss = [int(line.split()[1]) for line in out.decode().splitlines() if "VmRSS" in line]
    return usage / MB, max(rss, default=0) / 1024


async def one_run(run: MakeRun, http: aiohttp.ClientSession, browser: Any) -> dict[str, float]:
    user = f"b{uuid.uuid4().hex[:10]}"
    t0 = time.monotonic()
    await asyncio.to_thread(run.cli, "simulate-payment", user)
    paid = time.monotonic()
    await until_running(run, http, user)
    running = time.monotonic()
    link = (await admin(run, http, "POST", f"/v1/users/{user}/signin-link"))["url"]
    context = await browser.new_context(viewport={"width": 1366, "height": 860})
    try:
        page = await context.new_page()
        ui = ControlUi(page)
        await page.goto(link)
        await ui.connected()
        shown = time.monotonic()
        usage, rss = await asyncio.to_thread(memory, run, user)
    finally:
        await context.close()
    await admin(run, http, "DELETE", f"/v1/users/{user}")
    await asyncio.to_thread(_purge, run, user)
    return {
        "payment_s": paid - t0,
        "to_running_s": running - t0,
        "to_ui_s": shown - t0,
        "usage_mb": usage,
        "rss_mb": rss,
    }


def _purge(run: MakeRun, user: str) -> None:
    import docker

    client = docker.from_env(timeout=60)
    try:
        purge_user(client, user)
    finally:
        client.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main(runs: int) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory() as tmp:
        run = MakeRun(Path(tmp) / "checkout")
        try:
            run.start()
            async with aiohttp.ClientSession() as http, async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
                )
                results = []
                for index in range(runs):
                    results.append(await one_run(run, http, browser))
                    print(f"run {index + 1}: {json.dumps(results[-1])}", file=sys.stderr)
                await browser.close()
        finally:
            run.close()
    summary: dict[str, Any] = {"runs": runs}
    for key in ("payment_s", "to_running_s", "to_ui_s", "usage_mb", "rss_mb"):
        values = [r[key] for r in results]
        summary[key] = {
            "p50": round(statistics.median(values), 2),
            "p99": round(percentile(values, 0.99), 2),
            "min": round(min(values), 2),
            "max": round(max(values), 2),
        }
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    found = asyncio.run(main(parser.parse_args().runs))
    for key, value in found.items():
        print(f"{key:14} {value}", file=sys.stderr)
    print(json.dumps(found))
