"""The rendered user data, booted under real cloud-init, leaves no sshd (issue 14, point 5).

tests/test_cloud_init.py runs the script against stubs; here it runs as on a server. The
image (tests/cloud_init_image.py: Debian bookworm, systemd, cloud-init, openssh-server,
whose ssh.service is enabled and listening at boot) starts with systemd as PID 1 in a
container (SYS_ADMIN, no network). cloud-init finds the rendered user data through
the NoCloud datasource, a seed directory bind-mounted at /var/lib/cloud/seed/nocloud, and
runs it in its final stage, after sshd has started.

With no network the bootstrap fails later, at `apt-get update` (retried for minutes):
the SSH step comes before it, so the tests wait, with a deadline, for the script's
`== apt-get update` log line and check the booted system then.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from docker.models.containers import Container

from cloud_init import render as r
from cloud_init import render_user_data
from tenant.openclaw import build
from tests import cloud_init_image
from tests.test_cloud_init import params

pytestmark = pytest.mark.docker

# Booting, three cloud-init stages and the script's first steps: under 10 s on an idle
# 2-core machine; the bound allows for a loaded CI machine.
BOOTED_WITHIN = 240.0
SSH_STEP_DONE = "== apt-get update"  # the step after "locking root and sealing SSH"
SEED = "/var/lib/cloud/seed/nocloud"
KEYS = "/clawfleet-test"
# Stands in for Hetzner's datasource: NoCloud only, and no network to configure.
CLOUD_CFG = "datasource_list: [NoCloud, None]\nnetwork: {config: disabled}\n"
LABEL = {"clawfleet.test": "cloud-init-boot"}


@pytest.fixture(scope="session")
def boot_image() -> str:
    tag = cloud_init_image.image_tag()
    if build.image_exists(tag):
        return tag
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but not root: the cloud-init image needs debootstrap")
        pytest.skip("the cloud-init image is not built and debootstrap needs root")
    started = time.monotonic()
    cloud_init_image.ensure_image()
    # A warning: the one report pytest shows from every xdist worker, pass or fail.
    warnings.warn(
        f"{tag} was missing, ready after {time.monotonic() - started:.0f} s (built once per "
        "machine; a first debootstrap takes minutes)",
        stacklevel=1,
    )
    return tag


@pytest.fixture(scope="module")
def dclient() -> Iterator[docker.DockerClient]:
    client = docker.from_env(version="auto", timeout=120)
    yield client
    client.close()


def openssh_key() -> tuple[str, bytes]:
    """A fresh ed25519 key: (public key line, private key in OpenSSH's format)."""
    key = ed25519.Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return public.decode() + " ops@laptop", private


def run(container: Container, *argv: str) -> tuple[int, str]:
    result = container.exec_run(list(argv))
    return result.exit_code, result.output.decode(errors="replace")


def wait_for_ssh_step(container: Container) -> str:
    """The bootstrap log once the SSH step is over; the boot's story if it never is."""
    deadline = time.monotonic() + BOOTED_WITHIN
    text = ""
    while time.monotonic() < deadline:
        container.reload()
        assert container.status == "running", container.logs().decode(errors="replace")
        _, text = run(container, "cat", r.LOG_FILE)
        if SSH_STEP_DONE in text or "FAILED" in text:
            return text
        time.sleep(1)
    _, story = run(container, "sh", "-c", "cloud-init status --long; systemctl --failed")
    _, cloud_log = run(container, "tail", "-n", "40", "/var/log/cloud-init.log")
    pytest.fail(f"no {SSH_STEP_DONE!r} in {BOOTED_WITHIN:.0f} s:\n{text}\n{story}\n{cloud_log}")


@contextlib.contextmanager
def boot(
    dclient: docker.DockerClient, image: str, user_data: str, tmp_path: Path
) -> Iterator[Container]:
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "user-data").write_text(user_data)
    (seed / "meta-data").write_text(
        f"instance-id: boot-test-{uuid.uuid4().hex[:8]}\nlocal-hostname: worker-test\n"
    )
    cfg = tmp_path / "99-clawfleet-boot-test.cfg"
    cfg.write_text(CLOUD_CFG)
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700, exist_ok=True)
    container = dclient.containers.run(
        image,
        ["/sbin/init"],
        name=f"clawfleet-test-cloud-init-{uuid.uuid4().hex[:8]}",
        labels=LABEL,
        detach=True,
        # What systemd as PID 1 needs on cgroup v1 (mounts, its cgroup tree). Not
        # --privileged: it asks for every capability, more than a nested engine may have.
        cap_add=["SYS_ADMIN"],
        security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        network_mode="none",
        tmpfs={"/run": "", "/run/lock": "", "/tmp": ""},
        environment={"container": "docker"},
        volumes={
            str(seed): {"bind": SEED, "mode": "ro"},
            str(cfg): {"bind": "/etc/cloud/cloud.cfg.d/99-clawfleet-boot-test.cfg", "mode": "ro"},
            str(keys): {"bind": KEYS, "mode": "ro"},
            "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "ro"},
        },
    )
    try:
        yield container
    finally:
        container.remove(force=True)


@pytest.fixture
def booted_sealed(
    dclient: docker.DockerClient, boot_image: str, tmp_path: Path
) -> Iterator[tuple[Container, str]]:
    user_data = render_user_data(params(image="debian-12"))
    with boot(dclient, boot_image, user_data, tmp_path) as container:
        yield container, wait_for_ssh_step(container)


def test_no_sshd_listens_and_root_has_no_password(booted_sealed: tuple[Container, str]) -> None:
    container, log = booted_sealed
    assert "FAILED" not in log, log
    # The image's sshd was up before cloud-init's final stage ran the script.
    _, journal = run(container, "journalctl", "-b", "-o", "cat", "-u", "ssh.service")
    assert "Server listening on 0.0.0.0 port 22" in journal, journal
    assert run(container, "ss", "-Hltn", "sport = :22") == (0, "")
    for unit in r.SSH_UNITS:
        assert run(container, "systemctl", "is-enabled", unit)[1].strip() == "masked", unit
        assert run(container, "systemctl", "is-active", unit)[1].strip() == "inactive", unit
    _, shadow = run(container, "grep", "^root:", "/etc/shadow")
    assert shadow.startswith("root:!*:"), shadow
    assert run(container, "passwd", "--status", "root")[1].split()[1] == "L"


@pytest.fixture
def booted_break_glass(
    dclient: docker.DockerClient, boot_image: str, tmp_path: Path
) -> Iterator[tuple[Container, str]]:
    public, private = openssh_key()
    other_public, other_private = openssh_key()
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    for name, data in (("operator", private), ("other", other_private)):
        (keys / name).write_bytes(data)
        (keys / name).chmod(0o600)
    (keys / "other.pub").write_text(other_public + "\n")
    user_data = render_user_data(params(image="debian-12", break_glass_ssh_key=public))
    with boot(dclient, boot_image, user_data, tmp_path) as container:
        yield container, wait_for_ssh_step(container)


def ssh(container: Container, *options: str) -> tuple[int, str]:
    """A login as root on 127.0.0.1 from inside the container, never asking anything."""
    return run(
        container,
        *("ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"),
        *("-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=30", "-o", "LogLevel=ERROR"),
        *options,
        *("root@127.0.0.1", "id", "-u"),
    )


def test_break_glass_sshd_takes_only_the_operators_key(
    booted_break_glass: tuple[Container, str],
) -> None:
    container, log = booted_break_glass
    assert "FAILED" not in log, log
    assert ":22" in run(container, "ss", "-Hltn", "sport = :22")[1]
    code, effective = run(container, "sshd", "-T")
    assert code == 0, effective
    settings = set(effective.splitlines())
    for line in (
        "passwordauthentication no",
        "kbdinteractiveauthentication no",
        "pubkeyauthentication yes",
        "authenticationmethods publickey",
        "permitrootlogin without-password",  # sshd -T's name for prohibit-password
        "allowusers root",
        f"authorizedkeysfile {r.BREAK_GLASS_KEYS}",
    ):
        assert line in settings, line
    # Key Hetzner would install for root: not read.
    assert (
        run(
            container, "sh", "-c", f"install -D -m 0600 {KEYS}/other.pub /root/.ssh/authorized_keys"
        )[0]
        == 0
    )
    assert ssh(container, "-i", f"{KEYS}/operator") == (0, "0\n")
    code, refused = ssh(container, "-i", f"{KEYS}/other")
    assert code == 255 and "Permission denied (publickey)" in refused, refused
    code, refused = ssh(container, "-o", "PubkeyAuthentication=no")
    assert code == 255 and "Permission denied (publickey)" in refused, refused
    _, shadow = run(container, "grep", "^root:", "/etc/shadow")
    assert shadow.startswith("root:!*:"), shadow
