"""Versions both sides agree on."""

PROTOCOL_VERSION = 1
__version__ = "0.1.0"
