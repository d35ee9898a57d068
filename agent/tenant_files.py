"""Config and secret files in a tenant's volumes, written before its container starts.

Contract: the owned keys are merged over the file as a JSON merge patch
(shared/merge_patch.py, RFC 7386: keys absent from `owned` are kept as the customer left
them; `null` deletes a customer key that would stop the gateway) and `fill_gateway` puts the user's network gateway
in place of `{{network_gateway}}` in `owned`'s strings. `prepare(plan)` then does the
file work in two phases: it first reads and merges every config file, and only when
all of them are usable does it write anything, so a refusal leaves every file as it
was. A config file that exists but is not a JSON object (or is unreadable, too big, not
a regular file) is never overwritten: `TenantFileError` says which file and why, and
the caller does not start the container.

The volume's contents belong to the tenant, who can plant symlinks: every path is
walked from the volume's mountpoint one component at a time with `O_NOFOLLOW`
(directories too), nothing is ever opened by a full path, files are replaced with a
rename inside the directory already opened, and only regular files are read. Written
files are mode 0600 and owned by the container's uid:gid; created directories 0700.
File contents never appear in an error or a log line.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import AgentError
from shared.merge_patch import merge_patch

PLACEHOLDER = "{{network_gateway}}"
MAX_FILE = 1 << 20  # a config file bigger than this is refused, not read
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class TenantFileError(AgentError):
    """A tenant file cannot be prepared; the message names the file, never its content."""

    code = "tenant_file"


def fill_gateway(value: Any, gateway: str) -> Any:
    """`value` with the placeholder replaced by `gateway` in every string it holds."""
    if isinstance(value, str):
        return value.replace(PLACEHOLDER, gateway)
    if isinstance(value, list):
        return [fill_gateway(v, gateway) for v in value]
    if isinstance(value, dict):
        return {k: fill_gateway(v, gateway) for k, v in value.items()}
    return value


def parts_of(path: str) -> list[str]:
    """The components of a volume-relative path; ValueError for anything that could
    leave the volume (absolute, empty, `.` or `..` components)."""
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in path:
        raise ValueError(f"file path {path!r} is not a plain relative path")
    return parts


@dataclass(frozen=True)
class ConfigFile:
    mountpoint: Path
    path: str
    seed: str
    owned: str


@dataclass(frozen=True)
class SecretFile:
    mountpoint: Path
    path: str
    content: str


@dataclass(frozen=True)
class FilePlan:
    uid: int
    gid: int
    gateway: str
    config: tuple[ConfigFile, ...] = ()
    secrets: tuple[SecretFile, ...] = ()


@contextlib.contextmanager
def _directory(mountpoint: Path, parts: list[str], uid: int, gid: int) -> Iterator[int]:
    """An fd of the directory holding `parts[-1]`, walked without following a link;
    missing directories are made (owned by the container's user)."""
    fd = os.open(mountpoint, _DIR_FLAGS)
    try:
        for name in parts[:-1]:
            try:
                os.mkdir(name, 0o700, dir_fd=fd)
                os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
            except FileExistsError:
                pass
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                raise TenantFileError(
                    f"{name!r} on the way to the file is not a directory"
                ) from None
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _read(dir_fd: int, name: str) -> bytes | None:
    """The file's bytes, None when absent; refuses links and anything not regular."""
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TenantFileError(f"cannot be opened safely ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise TenantFileError("is not a regular file")
        if info.st_size > MAX_FILE:
            raise TenantFileError(f"is larger than {MAX_FILE} bytes")
        return handle.read(MAX_FILE + 1)


def _write(dir_fd: int, name: str, data: bytes, uid: int, gid: int) -> None:
    """Replaces `name` atomically with a 0600 file owned by uid:gid."""
    tmp = f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchown(handle.fileno(), uid, gid)
            os.fchmod(handle.fileno(), 0o600)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # rename() replaces a link planted at `name` rather than following it.
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)


def merged_config(current: bytes | None, item: ConfigFile, gateway: str) -> bytes:
    """The config file's new bytes; TenantFileError when the existing file (or the
    spec's own JSON) is not an object."""
    try:
        base = json.loads(item.seed if current is None else current)
    except (ValueError, UnicodeDecodeError):
        base = None
    if not isinstance(base, dict):
        what = "the spec's seed" if current is None else "the file"
        raise TenantFileError(f"{what} is not a JSON object; left untouched")
    try:
        owned = json.loads(item.owned)
    except ValueError:
        owned = None
    if not isinstance(owned, dict):
        raise TenantFileError("the spec's owned keys are not a JSON object")
    merged = merge_patch(base, fill_gateway(owned, gateway))
    return (json.dumps(merged, indent=2, ensure_ascii=False) + "\n").encode()


def _claim_fresh_root(mountpoint: Path, uid: int, gid: int) -> None:
    """Gives a fresh volume's root to the container's user. Docker copies the image's
    directory (owner and mode) into a volume only while it is empty at its first mount;
    once we have written into it first, that never happens, and a root-owned root
    would keep the tenant from creating its own state. A root the tenant already
    owns is left as it is."""
    fd = os.open(mountpoint, _DIR_FLAGS)
    try:
        if os.fstat(fd).st_uid == 0 and uid != 0:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def prepare(plan: FilePlan) -> None:
    """Writes every file of `plan`, or none when a config file is refused."""
    writes: list[tuple[Path, str, bytes]] = []
    for item in plan.config:
        parts = _checked_parts(item.path)
        try:
            with _directory(item.mountpoint, parts, plan.uid, plan.gid) as dir_fd:
                current = _read(dir_fd, parts[-1])
            writes.append((item.mountpoint, item.path, merged_config(current, item, plan.gateway)))
        except TenantFileError as exc:
            raise TenantFileError(
                f"config file {item.path}: {exc}; container not started"
            ) from None
        except OSError as exc:
            raise TenantFileError(f"config file {item.path}: {exc.strerror}") from None
    writes.extend((s.mountpoint, s.path, s.content.encode()) for s in plan.secrets)
    for mountpoint in dict.fromkeys(m for m, _, _ in writes):
        try:
            _claim_fresh_root(mountpoint, plan.uid, plan.gid)
        except OSError as exc:
            raise TenantFileError(f"volume root: {exc.strerror}") from None
    for mountpoint, path, data in writes:
        parts = _checked_parts(path)
        try:
            with _directory(mountpoint, parts, plan.uid, plan.gid) as dir_fd:
                _write(dir_fd, parts[-1], data, plan.uid, plan.gid)
        except TenantFileError as exc:
            raise TenantFileError(f"file {path}: {exc}") from None
        except OSError as exc:
            raise TenantFileError(f"file {path}: cannot be written ({exc.strerror})") from None


def _checked_parts(path: str) -> list[str]:
    try:
        return parts_of(path)
    except ValueError as exc:
        raise TenantFileError(str(exc)) from None
