"""The image `make run` runs for users when the configured one cannot be pulled.

Contract: `ensure_agent_image(settings)` (PROVIDER=local only, called by `__main__`)
returns settings whose AGENT_IMAGE the local Docker engine has:
1. the configured image when it is present or can be pulled;
2. else, with the `openclaw` tenant profile, the real OpenClaw image built here from
   PyPI, npm and Debian (tenant/openclaw/build.py: minutes the first time, then cached by
   its inputs' hash), so a newcomer's `make run` runs the real product;
3. else (another profile, or the build failed: no root for debootstrap, no registry)
   `clawfleet-demo:<version>`, built from the static busybox binary (Debian package
   busybox-static), with the `generic` profile: `busybox httpd` answers `/healthz` on the
   agent port, so the whole loop (placement, reconcile, health, route) still works.
It says which, loudly; it never replaces an image silently.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from control.settings import Settings, profiles
from shared.version import __version__

log = logging.getLogger(__name__)
DEMO_TAG = f"clawfleet-demo:{__version__}"
PULL_TIMEOUT = 60


def _dockerfile(port: int) -> str:
    return (
        "FROM scratch\n"
        "COPY busybox /bin/busybox\n"
        "COPY www /www\n"
        'LABEL org.opencontainers.image.title="Clawfleet demo agent"\n'
        f'CMD ["/bin/busybox", "httpd", "-f", "-p", "{port}", "-h", "/www"]\n'
    )


def build_demo_image(client: object, port: int) -> str:
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not Path(busybox).exists():
        raise RuntimeError(
            "no busybox binary to build the demo image: apt-get install busybox-static"
        )
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        shutil.copy(busybox, ctx / "busybox")
        www = ctx / "www"
        www.mkdir()
        (www / "healthz").write_text("ok\n")
        (www / "index.html").write_text(
            "<!doctype html><title>Clawfleet demo agent</title>"
            "<p>This is Clawfleet's built-in demo agent: the configured AGENT_IMAGE could not be pulled.</p>\n"
        )
        (ctx / "Dockerfile").write_text(_dockerfile(port))
        client.images.build(path=str(ctx), tag=DEMO_TAG, rm=True, forcerm=True)  # type: ignore[attr-defined]
    return DEMO_TAG


def ensure_agent_image(settings: Settings) -> Settings:
    try:
        import docker

        client = docker.from_env(timeout=PULL_TIMEOUT)
        client.ping()
    except Exception as exc:  # best effort at start-up: no Docker is a warning, not a failure
        log.warning(
            "Docker is not reachable (%s): the local worker cannot run containers",
            type(exc).__name__,
        )
        return settings
    try:
        try:
            client.images.get(settings.agent_image)
            return settings
        except docker.errors.ImageNotFound:
            pass
        try:
            log.info("pulling %s (up to %ss)", settings.agent_image, PULL_TIMEOUT)
            client.images.pull(settings.agent_image)
            return settings
        except Exception as exc:  # any pull failure falls back to the demo image
            reason = type(exc).__name__
        if settings.tenant_profile.name == "openclaw":
            built = _openclaw_image(settings, reason)
            if built is not None:
                return built
        return _busybox_demo(client, settings, reason)
    finally:
        client.close()


def _openclaw_image(settings: Settings, reason: str) -> Settings | None:
    """The real OpenClaw image, built from the registries this machine reaches."""
    from tenant.openclaw import build

    print(
        f"NOTE: {settings.agent_image} could not be pulled ({reason}); building the real "
        "OpenClaw image from PyPI, npm and Debian (minutes the first time, cached after)",
        flush=True,
    )
    try:
        tag = build.ensure_image()
    except (build.BuildError, OSError) as exc:
        log.warning("the OpenClaw image could not be built (%s): falling back", exc)
        return None
    print(f"NOTE: users run the real OpenClaw image {tag}", flush=True)
    return settings.with_overrides(agent_image=tag)


def _busybox_demo(client: Any, settings: Settings, reason: str) -> Settings:
    import docker

    try:
        client.images.get(DEMO_TAG)
    except docker.errors.ImageNotFound:
        build_demo_image(client, settings.agent_port)
    log.warning(
        "AGENT_IMAGE %s could not be pulled (%s); users run the built-in demo image %s "
        "(busybox httpd answering /healthz, generic profile). Set AGENT_IMAGE to an image "
        "this machine can pull.",
        settings.agent_image,
        reason,
        DEMO_TAG,
    )
    print(
        f"NOTE: using the built-in demo image {DEMO_TAG}: {settings.agent_image} could not be pulled",
        flush=True,
    )
    # The busybox stand-in runs no gateway: the generic profile runs the image as it is.
    return settings.with_overrides(
        agent_image=DEMO_TAG,
        agent_health_path="/healthz",
        tenant_profile=profiles.load("generic"),
    )
