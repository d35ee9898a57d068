"""Logging: one line per event, readable text by default or JSON (LOG_FORMAT=json),
and a request id on every line logged while serving a request.

Contract: `setup(level, fmt)` configures the root logger once, from `__main__`.
`request_ids` is the middleware: it takes a sane `X-Request-Id` from the caller (or
makes one), exposes it to every log record through a context variable, returns it in
the response header, and logs one access line per request. Secrets never reach here:
nothing logs headers or bodies.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import time
from datetime import UTC, datetime

from aiohttp import web

from control.middleware import Handler

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_SANE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
access = logging.getLogger("clawfleet.access")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Our own access line (with the request id) replaces aiohttp's.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


@web.middleware
async def request_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    presented = request.headers.get("X-Request-Id", "")
    request_id = presented if _SANE_ID.match(presented) else secrets.token_hex(8)
    token = REQUEST_ID.set(request_id)
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-Id"] = request_id
        return response
    except web.HTTPException as exc:
        status = exc.status
        exc.headers["X-Request-Id"] = request_id
        raise
    finally:
        # The path only: query strings can carry nothing secret today, but never log them.
        # Heartbeats and long-polls are the bulk of the traffic: logged when they fail.
        quiet = request.path.startswith("/v1/agent/") and status < 400
        access.log(
            logging.DEBUG if quiet else logging.INFO,
            "%s %s %d %.1fms",
            request.method,
            request.path,
            status,
            (time.monotonic() - started) * 1000,
        )
        REQUEST_ID.reset(token)
