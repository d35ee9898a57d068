"""Logging: one line per event, readable text by default or JSON (LOG_FORMAT=json),
and a request id on every line logged while serving a request.

Contract: `setup(level, fmt)` configures the root logger once, from `__main__`, with
`handler(fmt)`. Every record carries the `REQUEST_ID` context variable: the HTTP layer
sets it per request (control/api/middleware.py `request_ids`), elsewhere it is `-`.
A foundation module: it imports nothing from control/. Secrets never reach here:
nothing logs headers or bodies.

One record is one line, whatever a caller put in it: both formatters pass every field
through `escape` (shared/logsafe.py, also used by the agent), which writes control and
other non-printable characters (newlines, carriage returns, escape sequences, U+2028,
bidi overrides) as `\n`, `\x1b`, `\u2028`... A traceback keeps its line breaks, but
each of its lines is escaped and starts with `| ` (text), so no line of it can pass for
a record; JSON has it in one field.
"""

from __future__ import annotations

import contextvars
import json
import logging
from datetime import UTC, datetime
from typing import TextIO

from shared.logsafe import CONTINUATION as CONTINUATION  # re-exported: tests, callers
from shared.logsafe import SafeTextFormatter, escape_lines
from shared.logsafe import escape as escape

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class TextFormatter(SafeTextFormatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": escape(record.levelname.lower()),
            "logger": escape(record.name),
            "message": escape(record.getMessage()),
            "request_id": escape(str(getattr(record, "request_id", "-"))),
        }
        if record.exc_info:
            entry["exception"] = escape_lines(self.formatException(record.exc_info), "")
        if record.stack_info:
            entry["stack"] = escape_lines(self.formatStack(record.stack_info), "")
        return json.dumps(entry, ensure_ascii=False)


def handler(fmt: str, stream: TextIO | None = None) -> logging.Handler:
    """The one log handler: request ids on every record, escaped, text or JSON."""
    made = logging.StreamHandler(stream)
    made.addFilter(_RequestIdFilter())
    made.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    return made


def setup(level: str, fmt: str) -> None:
    root = logging.getLogger()
    root.handlers[:] = [handler(fmt)]
    root.setLevel(level)
    # Our own access line (with the request id) replaces aiohttp's.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
