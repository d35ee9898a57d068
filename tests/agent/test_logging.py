"""The agent's own log cannot be forged: one record is one line (issue 9, agent side)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from agent.__main__ import setup_logging
from shared.logsafe import CONTINUATION

FORGED = "boom\n2026-01-01 00:00:00,000 ERROR agent.daemon: worker revoked\r\x1b[2K"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buffer = io.StringIO()
    setup_logging("INFO", buffer)
    try:
        yield buffer
    finally:
        root.handlers[:], root.level = saved


def test_a_forged_line_in_a_message_stays_in_its_record(stream: io.StringIO) -> None:
    logging.getLogger("agent.daemon").warning("heartbeat failed (%s); retry in 1.0s", FORGED)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(
        "heartbeat failed (boom\\n2026-01-01 00:00:00,000 ERROR agent.daemon: worker revoked"
        "\\r\\x1b[2K); retry in 1.0s"
    )
    assert " WARNING agent.daemon: " in lines[0]


def test_a_traceback_cannot_pass_for_a_record(stream: io.StringIO) -> None:
    try:
        raise RuntimeError(FORGED)
    except RuntimeError:
        logging.getLogger("agent.reconcile").exception("reconcile failed")
    first, *rest = stream.getvalue().splitlines()
    assert first.endswith("ERROR agent.reconcile: reconcile failed")
    assert rest and all(line.startswith(CONTINUATION) for line in rest)
    # The message's own line break stays (a traceback is lines), marked as continuation.
    assert (
        CONTINUATION + "2026-01-01 00:00:00,000 ERROR agent.daemon: worker revoked\\r\\x1b[2K"
        in rest
    )


def test_the_docker_sdk_stays_quiet(stream: io.StringIO) -> None:
    logging.getLogger("urllib3.connectionpool").info("GET /containers/json?all=1")
    assert stream.getvalue() == ""
