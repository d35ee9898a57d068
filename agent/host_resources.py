"""What this host has, as registration and every heartbeat report it (`Resources`).

Contract: `host_resources` never raises: an unreadable /proc/meminfo counts as 0 MiB
(available unknown), an unreadable disk as 0 GB (free unknown). The disk is the one that
holds `disk_path` (Docker's root directory), or / while that is not a directory.
"""

from __future__ import annotations

import os
import shutil

from shared.protocol import Resources


def _meminfo() -> tuple[int, int | None]:
    total = avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key == "MemTotal":
                    total = int(rest.split()[0]) // 1024
                elif key == "MemAvailable":
                    avail = int(rest.split()[0]) // 1024
    except OSError:
        pass
    return total or 0, avail


def host_resources(disk_path: str) -> Resources:
    total, avail = _meminfo()
    try:
        usage = shutil.disk_usage(disk_path if os.path.isdir(disk_path) else "/")
        disk_gb, free_gb = usage.total // 2**30, usage.free // 2**30
    except OSError:
        disk_gb, free_gb = 0, None
    return Resources(
        cpus=os.cpu_count() or 1,
        memory_mb=total,
        disk_gb=disk_gb,
        memory_available_mb=avail,
        disk_free_gb=free_gb,
    )
