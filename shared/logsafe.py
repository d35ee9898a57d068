"""Log lines that cannot be forged: one record is one line, whatever a caller put in it.

Used by both sides: the control plane's formatters (control/logs.py) and the agent's
(agent/__main__.py). A path, a header, an error body from the other side or a container
name can carry a newline and a fake record after it; escaped, it stays on its own line.

Contract:
- `escape(text)` writes every non-printable character (newlines, carriage returns,
  escape sequences, U+2028, bidi overrides...) as a Python escape (`\\n`, `\\x1b`,
  `\\u2028`); printable text, non-ASCII letters included, is unchanged.
- `escape_lines(text, prefix)` escapes a multi-line text (a traceback) line by line,
  keeping only its "\\n" breaks, each line starting with `prefix`.
- `SafeTextFormatter(fmt)` is a `logging.Formatter` whose record line is escaped as a
  whole and whose traceback and stack lines each start with `CONTINUATION` ("| "), so
  that no line of them can pass for a record.
"""

from __future__ import annotations

import logging

CONTINUATION = "| "
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text: str) -> str:
    """`text` with every non-printable character written as a Python escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape_char(c) for c in text)


def _escape_char(c: str) -> str:
    if c in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[c]
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape_lines(text: str, prefix: str) -> str:
    # Only "\n" breaks a line here: \r, U+2028 and the like inside a line are escaped.
    return "\n".join(prefix + escape(line) for line in text.rstrip("\n").split("\n"))


class SafeTextFormatter(logging.Formatter):
    """A text formatter whose every output line is either one whole record or marked as
    the continuation of one."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        return escape_lines(super().formatException(ei), CONTINUATION)

    def formatStack(self, stack_info: str) -> str:
        return escape_lines(super().formatStack(stack_info), CONTINUATION)
