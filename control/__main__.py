"""`python -m control`: read settings from the environment (and ./.env), serve.

With `--local-secrets DIR` (what `make run` uses), ADMIN_TOKEN, INTERNAL_SECRET and
STRIPE_WEBHOOK_SECRET default to files in DIR, generated with mode 0600 on first run; the admin token is
printed once, when it is created. DIR is made 0700: it holds secrets (and, with `make run`,
the database).

Once start-up is done, the garbage collector is tuned (`tune_collector`): what
start-up built is frozen and the thresholds are GC_THRESHOLDS (docs/benchmarks.md).

The port is bound before anything else starts, so a port in use stops start-up before
the store is opened or the autoscaler runs once. A failed start-up prints one line,
`clawfleet: <kind> error: <cause>`, on stderr and exits:
- 2 (`EXIT_CONFIG`): the configuration is wrong (a setting, a server type the provider
  refuses, a missing agent wheel, a DNS token without rights); restarting cannot help;
- 1 (`EXIT_START`): this machine's state: the port is in use, the database cannot be
  opened or written, another control plane holds it (`<db>.lock`), the local secrets
  cannot be read; a restart succeeds once that is fixed.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import secrets
import socket
import sys
from pathlib import Path

from aiohttp import web

from control import logs
from control.app import create_app
from control.capacity.demo_image import ensure_agent_image
from control.capacity.providers.base import ProviderError
from control.db.store import StoreUnavailable
from control.dns.provider import DnsError
from control.settings import Settings, SettingsError
from control.workers.bootstrap import DistMissing

EXIT_START = 1
EXIT_CONFIG = 2
# The collector after start-up (issue 16): at 10k workers every held long-poll is a
# few dozen objects that live for up to a minute, and Python's defaults (700, 10, 10)
# stop the loop for a full collection (over a second) every few seconds. Young
# collections every 50k allocations; an older generation only after 1,000 of them: a
# gen-1 collection walks every held long-poll (0.4 s of CPU at 10k), and in every
# measured run no collection found any cyclic garbage to free (docs/benchmarks.md).
GC_THRESHOLDS = (50_000, 1_000, 10)
GC_FREEZE = True


def read_dotenv(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        values[name.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
    return values


def local_secret(directory: Path, name: str, announce: bool) -> str:
    path = directory / name.lower()
    if path.exists():
        return path.read_text().strip()
    directory.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    if announce:
        print(f"Generated {name} into {path} (shown once): {value}", flush=True)
    return value


def private_directory(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory.stat().st_mode & 0o077:
        # Not ours to tighten (another owner): the files inside are 0600 regardless.
        with contextlib.suppress(PermissionError):
            directory.chmod(0o700)


def build_env(args: argparse.Namespace) -> dict[str, str]:
    env = {**read_dotenv(Path(".env")), **os.environ}
    if args.local_secrets:
        directory = Path(args.local_secrets)
        private_directory(directory)
        # The webhook secret lets `clawfleet simulate-payment` sign demo events.
        for name, announce in (
            ("ADMIN_TOKEN", True),
            ("INTERNAL_SECRET", False),
            ("STRIPE_WEBHOOK_SECRET", False),
        ):
            if not env.get(name):
                env[name] = local_secret(directory, name, announce)
        env.setdefault("DATABASE_PATH", str(directory / "clawfleet.db"))
    return env


def listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address `host` resolves to (all interfaces when
    empty), as aiohttp would bind them."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            # Listening at once: on Linux, SO_REUSEADDR lets a second process bind a
            # port that nobody listens on yet.
            sock.listen(128)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def fail(kind: str, cause: object, code: int) -> int:
    print(f"clawfleet: {kind} error: {cause}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m control", description="Clawfleet control plane"
    )
    parser.add_argument(
        "--local-secrets",
        metavar="DIR",
        help="generate/read ADMIN_TOKEN and INTERNAL_SECRET in DIR when unset",
    )
    args = parser.parse_args(argv)
    try:
        env = build_env(args)
    except OSError as exc:
        return fail("start-up", f"local secrets in {args.local_secrets}: {exc}", EXIT_START)
    try:
        settings = Settings.from_env(env)
    except SettingsError as exc:
        return fail("configuration", exc, EXIT_CONFIG)
    logs.setup(settings.log_level, settings.log_format)
    address = f"{settings.listen_host}:{settings.listen_port}"
    try:
        listeners = listen(settings.listen_host, settings.listen_port)
    except OSError as exc:
        return fail("start-up", f"cannot listen on {address}: {exc.strerror or exc}", EXIT_START)
    try:
        return serve(settings, listeners)
    finally:
        for sock in listeners:
            sock.close()


def tune_collector(app: web.Application) -> None:
    """Once start-up is done (the last start-up hook): collect, freeze what survived
    (modules, settings, routes: never garbage, never walked again by a collection)
    and set the thresholds measured for a fleet's steady load (docs/benchmarks.md,
    "Garbage collection")."""

    async def tuned(_app: web.Application) -> None:
        gc.collect()
        if GC_FREEZE:
            gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)

    app.on_startup.append(tuned)


def database_name(settings: Settings) -> str:
    """The database as logs may show it: PostgreSQL's host, port and name (never the
    URL, which may hold a password), or SQLite's file."""
    if settings.database_url:
        from control.db.postgres import where  # the driver only where it is used

        return "postgresql " + where(settings.database_url)
    return settings.database_path


def serve(settings: Settings, listeners: list[socket.socket]) -> int:
    if settings.provider == "local":
        settings = ensure_agent_image(settings)
    print(
        f"Clawfleet control plane on http://{settings.listen_host}:{settings.listen_port} "
        f"(database {database_name(settings)}, provider {settings.provider})",
        flush=True,
    )
    try:
        app = create_app(settings)
        tune_collector(app)
        web.run_app(app, sock=listeners, print=None)
    except (ProviderError, DistMissing, DnsError) as exc:
        # Checked before serving: a wrong server type, a missing wheel or a DNS token
        # without edit rights must not surface hours later as a user who never starts.
        print(f"clawfleet: start-up error: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        return fail("start-up", exc.message, EXIT_START)
    return 0


if __name__ == "__main__":
    sys.exit(main())
