"""`python -m agent`: read the environment (only here), run the daemon, exit.

Exit statuses: 0 stopped by SIGTERM/SIGINT, 2 bad or missing configuration (one line on
stderr), 3 worker revoked by the control plane (systemd: RestartPreventExitStatus=3).

The log goes to stderr (the journal), one record per line: `setup_logging` escapes
control characters with shared/logsafe.py, so an error body from the control plane or
a registry, or a container's name, cannot write a line that passes for a record.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import TextIO

from agent.config import ConfigError, settings_from_process
from agent.daemon import Daemon
from agent.registration import EXIT_CONFIG
from shared.logsafe import SafeTextFormatter

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str | int, stream: TextIO) -> None:
    """The root logger writes escaped records to `stream` (replacing any handler)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SafeTextFormatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Quiet the Docker SDK's connection chatter; it can echo request details.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("docker").setLevel(logging.WARNING)


async def _serve(daemon: Daemon) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop)
    return await daemon.run()


def main() -> None:
    try:
        settings = settings_from_process()
    except ConfigError as exc:
        print(f"clawfleet-agent: configuration error: {exc}", file=sys.stderr, flush=True)
        sys.exit(EXIT_CONFIG)
    setup_logging(settings.log_level, sys.stderr)
    status = asyncio.run(_serve(Daemon(settings)))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # A Docker call still running in a worker thread (a long pull) must not hold up
    # shutdown past systemd's stop timeout; state files are already written atomically.
    os._exit(status)


if __name__ == "__main__":
    main()
