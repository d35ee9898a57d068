"""Test images built from the static busybox: no registry needed.

`good` serves /healthz with `busybox httpd` on PORT; `broken` serves nothing at
/healthz (404), so it never becomes healthy; `echo` (build_echo) also answers with the
identity header it was sent. Every image carries `clawfleet.test=1`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import docker

BUSYBOX = "/usr/bin/busybox"
PORT = 18789
TEST_LABEL = "clawfleet.test"


def build(client: docker.DockerClient, tag: str, *, healthy: bool, marker: str = "v1") -> str:
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        shutil.copy(BUSYBOX, ctx / "busybox")
        www = ctx / "www"
        www.mkdir()
        (www / "version").write_text(marker + "\n")
        if healthy:
            (www / "healthz").write_text("ok\n")
        (ctx / "Dockerfile").write_text(
            "FROM scratch\n"
            "COPY busybox /bin/busybox\n"
            "COPY www /www\n"
            f'LABEL {TEST_LABEL}="1"\n'
            f'CMD ["/bin/busybox", "httpd", "-f", "-v", "-p", "{PORT}", "-h", "/www"]\n'
        )
        image, _ = client.images.build(path=str(ctx), tag=tag, rm=True, forcerm=True)
        return str(image.id)


ECHO_SCRIPT = """#!/bin/busybox sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
printf 'user=%s\\n' "$HTTP_X_CLAWFLEET_USER"
"""


def build_echo(client: docker.DockerClient, tag: str) -> str:
    """`good`, plus /cgi-bin/whoami answering `user=<X-Clawfleet-User header>`; with
    `-v` the server logs every request line, so a test can tell whether it was reached."""
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        shutil.copy(BUSYBOX, ctx / "busybox")
        cgi = ctx / "www" / "cgi-bin"
        cgi.mkdir(parents=True)
        (ctx / "www" / "healthz").write_text("ok\n")
        (cgi / "whoami").write_text(ECHO_SCRIPT)
        (cgi / "whoami").chmod(0o755)
        (ctx / "Dockerfile").write_text(
            "FROM scratch\n"
            "COPY busybox /bin/busybox\n"
            "COPY www /www\n"
            f'LABEL {TEST_LABEL}="1"\n'
            f'CMD ["/bin/busybox", "httpd", "-f", "-vv", "-p", "{PORT}", "-h", "/www"]\n'
        )
        image, _ = client.images.build(path=str(ctx), tag=tag, rm=True, forcerm=True)
        return str(image.id)
