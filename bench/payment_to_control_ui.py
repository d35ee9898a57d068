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
With `--checkout-seconds D`, each customer goes through the portal instead, as a buyer
does (docs/portal.md): sign-up's API opens a Checkout on the local stand-in (which,
with PRESTART on, starts their agent while they pay: control/users/prestart.py), D
seconds pass (the buyer typing their card), then t0: the stand-in's Pay sends the
signed webhooks; running: the status page says ready; its "Open my agent" gives the
sign-in link the browser opens. Each sign-up comes from its own loopback address
(127.0.0.N), so PORTAL_CHECKOUTS_PER_HOUR never refuses one.
Then the user is deleted and its container removed before the next run, so every run
starts the same way. Prints a table on stderr and one JSON line on stdout.
Usage: .venv/bin/python bench/payment_to_control_ui.py [--runs 20] [--checkout-seconds D]
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


async def one_run(
    run: MakeRun, http: aiohttp.ClientSession, browser: Any, checkout: float | None, index: int
) -> dict[str, float]:
    if checkout is None:
        user, t0 = f"b{uuid.uuid4().hex[:10]}", time.monotonic()
        await asyncio.to_thread(run.cli, "simulate-payment", user)
        paid = time.monotonic()
        await until_running(run, http, user)
        running = time.monotonic()
        link = (await admin(run, http, "POST", f"/v1/users/{user}/signin-link"))["url"]
    else:
        user, link, (t0, paid, running) = await through_portal(run, http, checkout, index)
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


async def portal(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> dict[str, Any]:
    async with http.request(method, url, json=body) as response:
        found: dict[str, Any] = await response.json()
        if response.status >= 400:
            raise RuntimeError(f"{method} {url}: {response.status} {found}")
        return found


async def through_portal(
    run: MakeRun, http: aiohttp.ClientSession, checkout: float, index: int
) -> tuple[str, str, tuple[float, float, float]]:
    """A buyer's sign-up, D seconds on the checkout page, Pay, the status page until
    ready and its "Open my agent": (user id, sign-in link, (t0, paid, running))."""
    name = f"b{uuid.uuid4().hex[:10]}"
    order = {"subdomain": name, "plan": "default", "email": f"{name}@example.com"}
    # Its own loopback address: the per-address sign-up limit counts each buyer apart.
    address = f"127.0.0.{2 + index % 250}"
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as buyer:
        opened = await portal(buyer, "POST", run.url + "/portal/api/checkout", order)
    session_id = opened["url"].rstrip("/").rsplit("/", 1)[-1]
    await asyncio.sleep(checkout)  # the buyer types their card: the point of the bench
    t0 = time.monotonic()
    pay = f"{run.url}/portal/api/stand-in/checkout/{session_id}/pay"
    token = (await portal(http, "POST", pay, {}))["redirect"].rstrip("/").rsplit("/", 1)[-1]
    paid = time.monotonic()
    status = f"{run.url}/portal/api/status/{token}"
    deadline = time.monotonic() + 240
    while (await portal(http, "GET", status))["step"] != "ready":
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not ready after 240 s")
        await asyncio.sleep(0.1)
    running = time.monotonic()
    link = (await portal(http, "POST", status + "/open", {}))["url"]
    users = (await admin(run, http, "GET", "/v1/users"))["users"]
    user = next(u["user_id"] for u in users if u["subdomain"] == name)
    return user, link, (t0, paid, running)


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


async def main(runs: int, checkout: float | None) -> dict[str, Any]:
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
                    results.append(await one_run(run, http, browser, checkout, index))
                    print(f"run {index + 1}: {json.dumps(results[-1])}", file=sys.stderr)
                await browser.close()
        finally:
            run.close()
    summary: dict[str, Any] = {"runs": runs, "checkout_s": checkout}
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
    parser.add_argument(
        "--checkout-seconds",
        type=float,
        default=None,
        help="sign up through the portal and pay on its stand-in after this many seconds "
        "(default: `clawfleet simulate-payment`, no checkout)",
    )
    args = parser.parse_args()
    found = asyncio.run(main(args.runs, args.checkout_seconds))
    for key, value in found.items():
        print(f"{key:14} {value}", file=sys.stderr)
    print(json.dumps(found))
