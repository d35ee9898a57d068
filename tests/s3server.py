"""A real S3-speaking server on 127.0.0.1 for the backup tests and bench: moto's server
mode (PyPI `moto[server]`, the dev extra), one process, in-memory buckets.

moto answers the S3 REST API restic's backend (minio-go) uses: bucket create and
location, object put/get/head/list/delete with V4 signatures. It does not check the
credentials: a test of a wrong S3 key would pass here and fail on real storage, so the
tests check the repository password (which restic checks itself) instead.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

from tests.ports import free_port

ACCESS_KEY = "clawfleet-test-access"
SECRET_KEY = "test-only-not-a-secret"  # moto checks no credentials


@dataclass(frozen=True)
class S3:
    endpoint: str  # http://127.0.0.1:<port>

    def repo_url(self, bucket: str, path: str) -> str:
        return f"s3:{self.endpoint}/{bucket}/{path}"


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=1):  # noqa: S310 - our own loopback URL
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means it serves
    except OSError:
        return False


@contextlib.contextmanager
def s3_server(start_timeout: float = 60.0) -> Iterator[S3]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        # A separate process gives no event to await: poll its port until it answers.
        while not _answers(endpoint):
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not answer within {start_timeout} s")
            time.sleep(0.1)
        yield S3(endpoint)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
