"""`python -m control`: read settings from the environment (and ./.env), serve.

With `--local-secrets DIR` (what `make run` uses), ADMIN_TOKEN, INTERNAL_SECRET and
STRIPE_WEBHOOK_SECRET default to files in DIR, generated with mode 0600 on first run; the admin token is
printed once, when it is created.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from aiohttp import web

from control import logs
from control.app import create_app
from control.bootstrap import DistMissing
from control.demo_image import ensure_agent_image
from control.dns import DnsError
from control.providers.base import ProviderError
from control.settings import Settings, SettingsError


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


def build_env(args: argparse.Namespace) -> dict[str, str]:
    env = {**read_dotenv(Path(".env")), **os.environ}
    if args.local_secrets:
        directory = Path(args.local_secrets)
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
        settings = Settings.from_env(build_env(args))
    except SettingsError as exc:
        print(f"clawfleet: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, settings.log_format)
    if settings.provider == "local":
        settings = ensure_agent_image(settings)
    print(
        f"Clawfleet control plane on http://{settings.listen_host}:{settings.listen_port} "
        f"(database {settings.database_path}, provider {settings.provider})",
        flush=True,
    )
    try:
        web.run_app(
            create_app(settings), host=settings.listen_host, port=settings.listen_port, print=None
        )
    except (ProviderError, DistMissing, DnsError) as exc:
        # Checked before serving: a wrong server type, a missing wheel or a DNS token
        # without edit rights must not surface hours later as a user who never starts.
        print(f"clawfleet: start-up error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
