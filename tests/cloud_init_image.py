"""A Debian image that boots like a worker: systemd as PID 1, cloud-init, openssh-server.

Contract:
- The image is Debian bookworm `minbase` plus PACKAGES, made by debootstrap and imported
  into Docker with tenant/openclaw/build.py's own steps (its rootfs maker, runner, lock
  and image check): no image registry is needed, only a Debian mirror.
- The tag is `clawfleet-test/cloud-init:bookworm-<12 hex>`, the first hex digits of the
  sha256 of the pins below (suite, mirror, variant, packages, RECIPE). `ensure_image`
  builds nothing when that tag exists; otherwise it reuses the rootfs tarball cached
  under CLAWFLEET_CACHE_DIR (default /var/cache/clawfleet) and runs debootstrap only
  when the tarball is missing too. One build at a time per cache dir (a file lock).
- The image holds no test configuration: tests/test_cloud_init_boot.py mounts the
  NoCloud seed and cloud-init's datasource settings when it boots a container.
- Making the rootfs needs root (debootstrap); `python -m tests.cloud_init_image` prints
  the tag on stdout and progress, with each step's time, on stderr.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tenant.openclaw import build

REPOSITORY = "clawfleet-test/cloud-init"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
VARIANT = "minbase"
# systemd runs as PID 1 and cloud-init runs the user data as on a server; iproute2 gives
# the bootstrap its `ss`. debootstrap resolves no virtual packages: python3-cryptography
# (a cloud-init dependency) needs python3-cffi-backend named here.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "cloud-init",
    "openssh-server",
    "iproute2",
    "python3-cffi-backend",
)
# Part of the tag: bump it when the steps that make the image change.
RECIPE = "debootstrap+import-1"
CACHE_LOCK = "cloud-init-image.lock"


def pins() -> build.Versions:
    """The [debian] pins in build.py's shape; its rootfs maker reads only those fields."""
    return build.Versions(
        node_version="",
        node_wheel="",
        node_sha256="",
        openclaw="",
        debian_suite=SUITE,
        debian_mirror=MIRROR,
        debian_variant=VARIANT,
        debian_packages=PACKAGES,
    )


def image_tag() -> str:
    versions = pins()
    digest = build.short_hash([*build.debian_pins(versions), RECIPE])
    return f"{REPOSITORY}:{SUITE}-{digest}"


def ensure_image(cache_dir: Path | None = None) -> str:
    """Return the tag of the image for the current pins, building it if it is missing."""
    tag = image_tag()
    if build.image_exists(tag):
        return tag
    cache = cache_dir or Path(os.environ.get(build.CACHE_ENV, build.DEFAULT_CACHE))
    cache.mkdir(parents=True, exist_ok=True)
    with build.locked(cache / CACHE_LOCK):
        if build.image_exists(tag):  # another process built it while we waited
            return tag
        started = time.monotonic()
        tarball = cache / "debian" / f"cloud-init-{tag.split(':')[1]}-{VARIANT}.tar"
        if not tarball.is_file():
            tarball.parent.mkdir(parents=True, exist_ok=True)
            build.make_rootfs(tarball, pins())
        build.run_step(
            ["docker", "import", "--change", 'CMD ["/sbin/init"]', str(tarball), tag],
            step="docker import",
            timeout=build.TIMEOUT_DOCKER,
        )
        _log(f"built {tag} in {time.monotonic() - started:.0f} s")
    return tag


def _log(message: str) -> None:
    print(f"[cloud-init-image] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    try:
        print(ensure_image())
    except build.BuildError as exc:
        _log(f"error: {exc}")
        sys.exit(1)
