"""The test harness's port reservation: nobody else takes the port, our server still can."""

from __future__ import annotations

import errno
import socket

import pytest
from aiohttp import web

from tests.ports import free_port


def test_a_reserved_port_is_refused_to_a_plain_bind() -> None:
    port = free_port()
    with socket.socket() as other, pytest.raises(OSError) as err:
        other.bind(("127.0.0.1", port))
    assert err.value.errno == errno.EADDRINUSE


async def test_our_server_binds_a_reserved_port_twice_in_a_row() -> None:
    port = free_port()
    for _ in range(2):  # a restart binds again
        runner = web.AppRunner(web.Application())
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await runner.cleanup()


def test_nothing_answers_on_a_reserved_port() -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", free_port()), timeout=2).close()
