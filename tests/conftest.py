"""Suite-wide fixtures and the Docker rule: a test marked `docker` is skipped when no
engine answers, except under CI=true, where that skip becomes a failure. The same rule
holds for `blockdev` (root, loop devices, mkfs and mount).

`--db=postgres` (or CLAWFLEET_TEST_DB=postgres) runs only the tests that can reach a
database, each control plane that tests/fixtures.py `make_settings` builds on a fresh
PostgreSQL database of this process's cluster; files that read the SQLite file
themselves (SQLITE_ONLY) and tests marked `sqlite_only(reason)` are left out."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres_server import PostgresServer
from tests.postgres_server import binaries as postgres_binaries

pytest_plugins = [
    "tests.fixtures",
    "tests.fakes.hetzner",
    "tests.fakes.cloudflare",
    "tests.fakes.stripe_api",
]


def docker_available() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def blockdev_available() -> bool:
    """Root, loop devices and the tools the agent's block volumes use (agent/volumes.py)."""
    tools = ("losetup", "blkid", "mkfs.ext4", "mount", "umount")
    return (
        os.geteuid() == 0
        and os.path.exists("/dev/loop-control")
        and all(shutil.which(t) for t in tools)
    )


def _blockdev_rule(items: list[pytest.Item]) -> None:
    """The `blockdev` marker's rule, the Docker rule's twin."""
    marked = [item for item in items if item.get_closest_marker("blockdev")]
    if not marked or blockdev_available():
        return
    if os.environ.get("CI") == "true":
        raise pytest.UsageError("CI=true but loop devices or root are missing: blockdev tests")
    skip = pytest.mark.skip(reason="needs root and loop devices (set CI=true to make this fail)")
    for item in marked:
        item.add_marker(skip)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _postgres_selection(config, items)
    _blockdev_rule(items)
    if not any(item.get_closest_marker("docker") for item in items):
        return
    if docker_available():
        return
    if os.environ.get("CI") == "true":
        raise pytest.UsageError("CI=true but no Docker engine answers: Docker tests must run in CI")
    skip = pytest.mark.skip(reason="no Docker engine answers (set CI=true to make this a failure)")
    for item in items:
        if item.get_closest_marker("docker"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """This pytest process's throwaway PostgreSQL cluster (tests/postgres_server.py):
    skipped when PostgreSQL is not installed, a failure under CI=true."""
    bindir = postgres_binaries()
    if bindir is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but PostgreSQL is not installed (.ci/run installs it)")
        pytest.skip("PostgreSQL is not installed (set CI=true to make this a failure)")
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database of the session's cluster."""
    return postgres_server.new_database()


# Test files that read or write the SQLite file themselves, skipped under
# CLAWFLEET_TEST_DB=postgres (their backend-neutral twins would cost more than they say).
SQLITE_ONLY = {
    name: "opens the SQLite file directly (or holds SQLite's read connection)"
    for name in (
        "test_admin_pages.py", "test_admin_read_apart.py", "test_agent_features.py",
        "test_agent_pace.py",
        "test_fleet_counts.py", "test_hetzner_pricing.py",
        "test_leader_app.py", "test_liveness.py", "test_longpoll_footprint.py",
        "test_origin_tls_http.py", "test_protocol.py", "test_protocol_bounds.py",
        "test_protocol_fuzz.py", "test_provider_outage.py", "test_relocation_source.py",
        "test_store.py", "test_stripe_e2e.py", "test_volume_scale_up.py",
        # tests/dashboard and tests/agent
        "test_auth.py", "test_browser.py", "test_browser_pages.py",
        "test_browser_volume_cost.py", "test_reregister.py",
    )
} | {"test_failover.py": "its replicas run on PostgreSQL in every pass"}  # fmt: skip


# What a test needs to have a database of its own: a directory for make_settings, or the
# shared fixtures' control plane.
_DATABASE_FIXTURES = {"tmp_path", "control", "control_factory", "postgres_url"}


def _postgres_selection(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under --db=postgres only the tests that can reach a database run: the others
    (pure functions) would only repeat the SQLite pass, and SQLITE_ONLY's files read
    the SQLite file itself."""
    if config.getoption("db") != "postgres":
        return
    keep, drop = [], []
    for item in items:
        reaches = _DATABASE_FIXTURES & set(getattr(item, "fixturenames", ()))
        (keep if reaches and item.path.name not in SQLITE_ONLY else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only(reason): skipped under --db=postgres, for the reason given"
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--db",
        choices=("sqlite", "postgres"),
        default=os.environ.get("CLAWFLEET_TEST_DB") or "sqlite",
        help="the backend of every control plane the shared fixtures build "
        "(tests/fixtures.py make_settings); also CLAWFLEET_TEST_DB",
    )


@pytest.fixture(autouse=True)
def database_backend(request: pytest.FixtureRequest) -> Iterator[None]:
    """Under --db=postgres, every test's make_settings gets a fresh PostgreSQL database
    (one per test directory); a test that reads the SQLite file is skipped."""
    from tests import fixtures

    if request.config.getoption("db") != "postgres":
        yield
        return
    marker = request.node.get_closest_marker("sqlite_only")
    if reason := (marker.args[0] if marker else SQLITE_ONLY.get(request.path.name)):
        pytest.skip(f"sqlite only: {reason}")
    server: PostgresServer = request.getfixturevalue("postgres_server")
    urls: dict[Path, str] = {}

    def database(path: Path) -> str:
        if path not in urls:
            urls[path] = server.new_database()
        return urls[path]

    fixtures.postgres_database = database
    try:
        yield
    finally:
        fixtures.postgres_database = None


@pytest.fixture(autouse=True)
def no_secrets_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test's captured log (INFO and up, all loggers) must be free of the secrets
    the suite configures: admin token, master secret, Stripe secrets."""
    from tests import fixtures, stripe_events

    caplog.set_level(logging.INFO)
    yield
    secrets = (
        fixtures.ADMIN_TOKEN,
        fixtures.INTERNAL_SECRET,
        stripe_events.WEBHOOK_SECRET,
        stripe_events.API_KEY,
    )
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        leaked = [s[:12] + "..." for s in secrets if s in text]
        assert not leaked, f"log record from {record.name} contains a configured secret ({leaked})"
