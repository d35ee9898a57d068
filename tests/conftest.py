"""Suite-wide fixtures and the Docker rule: a test marked `docker` is skipped when no
engine answers, except under CI=true, where that skip becomes a failure."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.fixtures", "tests.fakes.hetzner"]


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
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
