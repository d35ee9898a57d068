"""Runs the control plane as `python -m control` does, timing every garbage collection.

Run: `python bench/gc_probe.py OUT.json` (bench/heartbeats.py starts the control plane
this way). Each collection's pause is measured with `gc.callbacks` (start to stop, on
the event loop's thread: the loop is frozen for exactly that long) and, when the
control plane exits (SIGTERM ends `web.run_app` gracefully), written to OUT.json as
`{"pauses": [[unix time, generation, ms, objects collected, CPU ms], ...], "thresholds":
[...], "frozen": n}`. The CPU ms is the loop thread's own time in the collection: on a
machine shared with other work, the wall-clock pause also holds time the process
waited for a core.

`BENCH_GC_THRESHOLDS=a,b,c` and `BENCH_GC_FREEZE=0` replace the control plane's own
collector settings (control/__main__.py), to compare settings under the same load.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main() -> int:
    out = Path(sys.argv[1])
    pauses: list[tuple[float, int, float, int, float]] = []
    started = [0.0, 0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter(), time.thread_time()]
        else:
            pause = (time.perf_counter() - started[0]) * 1000
            cpu = (time.thread_time() - started[1]) * 1000
            gen, found = int(info["generation"]), int(info["collected"])
            pauses.append((time.time(), gen, pause, found, cpu))

    gc.callbacks.append(timed)
    from control import __main__ as control_main

    if thresholds := os.environ.get("BENCH_GC_THRESHOLDS"):
        a, b, c = (int(v) for v in thresholds.split(","))
        control_main.GC_THRESHOLDS = (a, b, c)
    if os.environ.get("BENCH_GC_FREEZE") == "0":
        control_main.GC_FREEZE = False
    try:
        return control_main.main([])
    finally:
        out.write_text(
            json.dumps(
                {
                    "pauses": pauses,
                    "thresholds": list(gc.get_threshold()),
                    "frozen": gc.get_freeze_count(),
                }
            )
        )


if __name__ == "__main__":
    sys.exit(main())
