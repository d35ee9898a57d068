"""Free loopback ports for test servers, reserved until the test process exits.

A port found by binding to 0 and closing again is free only for a moment: under
xdist another worker's ``free_port()`` or an outgoing connection can take it before
our server binds (CI saw ``address already in use``). So the probing socket stays
open, bound with SO_REUSEADDR and never listening: the kernel then hands the port to
no other bind or connect, while our own servers (aiohttp, Go, werkzeug and
http.server all set SO_REUSEADDR) can still bind it, again after a restart.
Connecting to a reserved port that nothing serves is refused, as before.
"""

from __future__ import annotations

import socket

_reserved: list[socket.socket] = []


def free_port() -> int:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    _reserved.append(s)
    return int(s.getsockname()[1])
