"""Backup and restore of realistic agent state with restic over S3 (docs/benchmarks.md).

For each size: fill a directory with agent state (tests/backup_state.py: small JSON
session files and markdown notes plus three SQLite files), snapshot it through
agent/backups.py into a fresh repository on a local S3 server (moto's server mode,
in memory), change one file, snapshot again, then restore the first snapshot into an
empty directory. Reports wall time and restic's own byte counts for each step.

The full run (`--sizes 100,1024`) writes about 1.1 GB twice and holds the repository in
the S3 server's memory: run it on an otherwise idle machine. `--sizes 20` is a smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.backups import Repository, Restic  # noqa: E402
from tests.backup_state import change_one_file, make_state  # noqa: E402
from tests.s3server import ACCESS_KEY, SECRET_KEY, s3_server  # noqa: E402

MB = 1024 * 1024


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


async def run_one(url: str, work: Path, size_mb: int) -> dict[str, float]:
    state = work / "state"
    files = make_state(state, size_mb * MB)
    repo = Repository(
        url=url,
        password="bench-" + os.urandom(8).hex(),
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
    )
    restic = Restic(repo, cache_dir=work / "cache")
    await restic.init_if_missing()
    started = time.perf_counter()
    first = await restic.snapshot(state)
    first_s = time.perf_counter() - started
    change_one_file(state)
    started = time.perf_counter()
    second = await restic.snapshot(state)
    second_s = time.perf_counter() - started
    target = work / "restored"
    started = time.perf_counter()
    await restic.restore(first.snapshot_id, target)
    restore_s = time.perf_counter() - started
    return {
        "files": files,
        "state_mb": _size(state) / MB,
        "first_s": first_s,
        "first_added_mb": first.data_added / MB,
        "second_s": second_s,
        "second_added_kb": second.data_added / 1024,
        "restore_s": restore_s,
        "restored_mb": _size(target) / MB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1024", help="state sizes in MB, comma-separated")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if shutil.which("restic") is None:
        sys.exit("restic is not installed (apt-get install restic)")
    print(f"load average at start: {os.getloadavg()[0]:.2f}; restic: {shutil.which('restic')}")
    print(
        "| state | files | 1st snapshot | added | 2nd snapshot (1 file changed) | added | restore of 1st | restored |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    with s3_server() as s3:
        for n, size in enumerate(sizes):
            with tempfile.TemporaryDirectory(prefix="bench-backups-") as tmp:
                r = asyncio.run(run_one(s3.repo_url("bench", f"run{n}"), Path(tmp), size))
            print(
                f"| {r['state_mb']:.0f} MB | {r['files']:.0f} | {r['first_s']:.2f} s | "
                f"{r['first_added_mb']:.1f} MB | {r['second_s']:.2f} s | {r['second_added_kb']:.0f} KB | "
                f"{r['restore_s']:.2f} s | {r['restored_mb']:.1f} MB |"
            )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
