"""How callers reach the control plane: directly on a loopback listener, or through a
reverse proxy. /metrics, the sign-in rate limits and the session cookie decide on this.

Contract (pure functions, no I/O):
- `loopback_listener(host)`: LISTEN_HOST binds loopback only (127.0.0.0/8, ::1,
  `localhost`). Anything else (0.0.0.0, a public address, a name) may be reached
  from outside.
- `behind_proxy(public_url, listen_port)`: PUBLIC_URL says something else fronts the
  listener. The control plane itself only speaks plain HTTP, so it is true when
  PUBLIC_URL is https, names a host that is not loopback, or a port other than
  LISTEN_PORT. The default PUBLIC_URL (http://LISTEN_HOST:LISTEN_PORT) is no proxy.
- `client_key(peer, forwarded_for, trust_forwarded)`: the address a caller is counted
  under. `X-Forwarded-For` is believed only when `trust_forwarded` (a proxy is
  configured and the TCP peer is loopback, i.e. that proxy), and then only its
  right-most entry, the one the proxy itself added: entries further left are whatever
  the client sent. IPv6 callers are counted per /64, which one subscriber usually
  holds whole; IPv4-mapped IPv6 counts as the IPv4 address.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def is_loopback(address: str | None) -> bool:
    if not address:
        return False
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def loopback_listener(host: str) -> bool:
    return is_loopback(host)


def behind_proxy(public_url: str, listen_port: int) -> bool:
    url = urlsplit(public_url)
    port = url.port or _DEFAULT_PORTS.get(url.scheme)
    return url.scheme != "http" or not is_loopback(url.hostname) or port != listen_port


def client_key(peer: str | None, forwarded_for: str | None, trust_forwarded: bool) -> str:
    address = _parse(peer)
    if trust_forwarded and address is not None and address.is_loopback and forwarded_for:
        forwarded = _parse(forwarded_for.split(",")[-1])
        if forwarded is not None:
            address = forwarded
    if address is None:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _parse(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
