"""``python -m bench.gcwatch OUT MODULE ARGS...``: run ``python -m MODULE ARGS...`` and
record every garbage-collector pause into OUT (JSON, rewritten twice a second).

The benchmarks start every server through this, so a latency table can say how many
full collections fell into its window and how long the longest one stopped the process.
A callback costs about a microsecond per collection; nothing else changes.
"""

from __future__ import annotations

import gc
import json
import os
import runpy
import sys
import threading
import time
from typing import Any

_pauses: list[tuple[int, float, float]] = []  # (generation, start, seconds)
_started: list[float] = [0.0]


def _callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.monotonic()
    else:
        _pauses.append((info["generation"], _started[0], time.monotonic() - _started[0]))


def _dump(path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"pauses": _pauses[:]}, fh)
    os.replace(tmp, path)


def _dumper(path: str) -> None:
    while True:
        time.sleep(0.5)
        _dump(path)


def main() -> None:
    out, module, *args = sys.argv[1:]
    gc.callbacks.append(_callback)
    threading.Thread(target=_dumper, args=(out,), daemon=True).start()
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        _dump(out)


def pauses(path: str, since: float = 0.0, until: float = float("inf")) -> dict[str, Any]:
    """Full (generation 2) collections that started in [since, until], and their longest."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {"full": 0, "full_max_ms": 0.0, "any_max_ms": 0.0}
    window = [p for p in data["pauses"] if since <= p[1] <= until]
    full = [p[2] for p in window if p[0] == 2]
    return {
        "full": len(full),
        "full_max_ms": max(full, default=0.0) * 1000,
        "any_max_ms": max((p[2] for p in window), default=0.0) * 1000,
    }


if __name__ == "__main__":
    main()
