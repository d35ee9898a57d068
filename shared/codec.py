"""Strict JSON decoding, and encoding, of the worker protocol's messages (shared/protocol.py
declares them and re-exports these names).

Contract: `decode(data, kind)` refuses a document nested deeper than `MAX_DEPTH` levels
of arrays and objects, unknown fields included, before msgspec reads it
(`nesting_exceeds`: linear passes, no recursion), and turns every shape or bound error
into `ProtocolError` with a path-qualified message ("... - at `$.resources.cpus`"). It
keeps one decoder per message type. `encode` and `to_builtins` are msgspec's.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

MAX_DEPTH = 32


class ProtocolError(ValueError):
    """A message did not match its schema.

    A ValueError, not a subclass of either program's root (ClawfleetError, AgentError):
    shared/ is below both programs and imports neither, and a malformed message is a bad
    value like any other decoder's. Each side turns it into its own error where it is
    caught (the control plane's 400, the agent's ControlPlaneError)."""


_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}
# Escapes first (an escaped quote ends no string), then strings (a bracket inside a
# string is text), then everything but brackets. Each step is one linear regex pass.
_ESCAPE = re.compile(rb"\\.", re.S)
_STRING = re.compile(rb'"[^"]*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
# Objects and arrays count alike for depth: "{...}" becomes "[...]".
_ONE_KIND = bytes.maketrans(b"{}", b"[]")


def nesting_exceeds(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """True when `data` nests arrays/objects deeper than `limit` (a document whose
    brackets do not balance is left to the decoder to describe). Each pass deletes the
    innermost empty pairs, so `limit` passes clear any document within the limit."""
    text = _STRING.sub(b"", _ESCAPE.sub(b"", data))
    brackets = text.translate(_ONE_KIND, _NOT_BRACKET)
    opens = brackets.count(b"[")
    if opens <= limit or 2 * opens != len(brackets):
        return False
    for _ in range(limit):
        if not brackets:
            return False
        # replace() never rescans what it produced: one level per pass.
        brackets = brackets.replace(b"[]", b"")
    return bool(brackets)


def decode(data: bytes, kind: type[T]) -> T:
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    too_deep = ProtocolError(f"JSON nested deeper than {MAX_DEPTH} levels")
    if nesting_exceeds(data):
        raise too_deep
    try:
        return decoder.decode(data)  # type: ignore[no-any-return]
    except msgspec.DecodeError as exc:
        raise ProtocolError(str(exc)) from None
    except RecursionError:
        # Unbalanced and deep (e.g. a megabyte of "["): the decoder's own stack guard.
        raise too_deep from None


def encode(message: Any) -> bytes:
    return msgspec.json.encode(message)


def to_builtins(message: Any) -> Any:
    return msgspec.to_builtins(message)
