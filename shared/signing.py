"""HMAC-SHA256 request signing for the worker protocol (docs/protocol.md).

Contract: `canonical_string` builds the exact text both sides sign; `sign_request`
returns the four `X-Clawfleet-*` headers for a request; `verify_signature` compares
in constant time and answers False, never raises, for anything that is not a
signature (non-ASCII, upper case, wrong length); `is_fresh` is the clock-window rule
in whole seconds. Nothing here knows about storage or replay: callers decide whether
a nonce is new.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote_to_bytes

ALGORITHM = "CLAWFLEET-HMAC-SHA256"
HEADER_KEY = "X-Clawfleet-Key"
HEADER_TIMESTAMP = "X-Clawfleet-Timestamp"
HEADER_NONCE = "X-Clawfleet-Nonce"
HEADER_SIGNATURE = "X-Clawfleet-Signature"
SIGNED_HEADERS = (HEADER_KEY, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)
MAX_CLOCK_SKEW = 300
NONCE_BYTES = 16
SIGNATURE = re.compile(r"[0-9a-f]{64}")  # lowercase hex only: one spelling per signature


def _encode(raw: bytes) -> str:
    # quote() keeps exactly RFC 3986's unreserved set when safe="" and writes upper-case hex.
    return quote(raw, safe="")


def encode_pairs(pairs: Iterable[tuple[str | bytes, str | bytes]]) -> str:
    """Canonical query from decoded (name, value) pairs."""
    encoded = []
    for name, value in pairs:
        n = name.encode() if isinstance(name, str) else name
        v = value.encode() if isinstance(value, str) else value
        encoded.append((_encode(n), _encode(v)))
    encoded.sort(key=lambda p: (p[0].encode("ascii"), p[1].encode("ascii")))
    return "&".join(f"{n}={v}" for n, v in encoded)


def canonical_query(raw_query: str) -> str:
    """Canonical query from a query string as it appeared on the wire."""
    pairs: list[tuple[bytes, bytes]] = []
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        # RFC 3986 has no '+'-means-space rule, so unquote_to_bytes (not unquote_plus).
        pairs.append((unquote_to_bytes(name), unquote_to_bytes(value)))
    return encode_pairs(pairs)


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def canonical_string(
    method: str, path: str, query: str, timestamp: str, nonce: str, key_id: str, body: bytes
) -> str:
    """The text that is signed. `query` is the raw query string (without '?')."""
    return "\n".join(
        [
            ALGORITHM,
            method.upper(),
            path,
            canonical_query(query),
            timestamp,
            nonce,
            key_id,
            body_digest(body),
        ]
    )


def signature(secret: str, canonical: str) -> str:
    return hmac.new(secret.encode(), canonical.encode(), hashlib.sha256).hexdigest()


def verify_signature(secret: str, canonical: str, presented: str) -> bool:
    if SIGNATURE.fullmatch(presented) is None:
        return False
    try:
        expected = signature(secret, canonical)
    except UnicodeEncodeError:  # a lone surrogate from undecodable request bytes
        return False
    # Both ASCII by now; hmac.compare_digest raises TypeError on non-ASCII str.
    return hmac.compare_digest(expected.encode(), presented.encode())


def is_fresh(timestamp: int, now: float, skew: int = MAX_CLOCK_SKEW) -> bool:
    """Whole seconds, as docs/protocol.md says: exactly `skew` seconds away is fresh."""
    return abs(int(now) - timestamp) <= skew


def new_nonce() -> str:
    return secrets.token_hex(NONCE_BYTES)


def sign_request(
    key_id: str,
    secret: str,
    method: str,
    path: str,
    params: Mapping[str, str] | None = None,
    body: bytes = b"",
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> tuple[str, dict[str, str]]:
    """Returns (query string to send, headers). Sending the canonical query itself
    means the server rebuilds exactly what was signed."""
    query = encode_pairs((params or {}).items())
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nc = nonce or new_nonce()
    sig = signature(secret, canonical_string(method, path, query, ts, nc, key_id, body))
    headers = {HEADER_KEY: key_id, HEADER_TIMESTAMP: ts, HEADER_NONCE: nc, HEADER_SIGNATURE: sig}
    return query, headers
