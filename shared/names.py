"""Names that become file names, DNS names, Traefik rules or Docker objects.

Contract: every check here is a full match over the whole value (`re.fullmatch`, never
`match` with a `$` that lets a trailing newline through), ASCII only (explicit
character ranges, never `\\w` or `\\d`, which accept other scripts) and bounded in
length. Both sides use them: the control plane when it accepts a setting or a request,
the agent when it accepts a spec, because a compromised or buggy control plane must not
be able to steer a worker outside these shapes. `parse_container_user` is the one
place that decides whether a container user is allowed: numeric `uid:gid`, both
non-zero (never root, never the root group), parsed as numbers so `00` is 0.
"""

from __future__ import annotations

import re

# Linux ids are 32 bits; runc and Docker treat values past 2^31 - 1 inconsistently.
MAX_ID = 2**31 - 1

USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# Docker's own rule for container, volume and network names, bounded.
DOCKER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
LABEL_KEY = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,126}[a-z0-9])?")
_LABEL_VALUE = re.compile(r"[\x20-\x7e]{0,256}")
ABS_PATH = re.compile(r"(?:/[A-Za-z0-9._-]{1,255}){1,32}")
URL_PATH = re.compile(r"/[A-Za-z0-9._~/%-]{0,255}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# An address as ACME and Stripe take it; 254 characters at most (RFC 5321's path limit).
EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+")
_ID = r"(?:0|[1-9][0-9]{0,9})"
CONTAINER_USER = re.compile(rf"({_ID}):({_ID})")

# The distribution reference grammar (registry/path:tag@digest), ASCII, bounded below.
_HOST_PART = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_REGISTRY = rf"(?:{_HOST_PART}(?:\.{_HOST_PART})*(?::[0-9]{{1,5}})?/)?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REF = re.compile(
    rf"{_REGISTRY}{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)


def user_id_ok(value: str) -> bool:
    return USER_ID.fullmatch(value) is not None


def dns_label_ok(value: str) -> bool:
    return DNS_LABEL.fullmatch(value) is not None


def dns_name_ok(value: str) -> bool:
    """A lower-case host name of DNS labels, at most 253 characters."""
    return 0 < len(value) <= 253 and all(dns_label_ok(part) for part in value.split("."))


def docker_name_ok(value: str) -> bool:
    return DOCKER_NAME.fullmatch(value) is not None


def image_ref_ok(value: str) -> bool:
    return len(value) <= 255 and IMAGE_REF.fullmatch(value) is not None


def label_ok(key: str, value: str) -> bool:
    return LABEL_KEY.fullmatch(key) is not None and _LABEL_VALUE.fullmatch(value) is not None


def abs_path_ok(value: str) -> bool:
    """An absolute path without `.` or `..` components (a mount target)."""
    if ABS_PATH.fullmatch(value) is None:
        return False
    return all(part not in (".", "..") for part in value.split("/")[1:])


def url_path_ok(value: str) -> bool:
    return URL_PATH.fullmatch(value) is not None and "/../" not in f"{value}/"


def env_name_ok(value: str) -> bool:
    return ENV_NAME.fullmatch(value) is not None


def email_ok(value: str) -> bool:
    return len(value) <= 254 and EMAIL.fullmatch(value) is not None


def parse_container_user(value: str) -> tuple[int, int]:
    """`uid:gid` as numbers; ValueError (safe to show) unless both are 1..MAX_ID.

    A uid alone is refused: Docker then takes the group from the image's /etc/passwd,
    or 0 (root) when the image has no entry for that uid.
    """
    match = CONTAINER_USER.fullmatch(value)
    if match is None:
        raise ValueError(f"expected numeric uid:gid, got {value!r}")
    uid, gid = int(match[1]), int(match[2])
    if uid == 0 or gid == 0:
        raise ValueError(f"{value!r} is root (uid 0) or the root group (gid 0)")
    if uid > MAX_ID or gid > MAX_ID:
        raise ValueError(f"{value!r}: ids are at most {MAX_ID}")
    return uid, gid
