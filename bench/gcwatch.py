"""``python -m bench.gcwatch OUT MODULE ARGS...``: run ``python -m MODULE ARGS...`` and
record every garbage-collector pause, and every stall of its event loop, into OUT (JSON,
rewritten twice a second).

The benchmarks start every server through this, so a latency table can say how many
full collections fell into its window and how long the longest one stopped the process,
and how long the event loop's longest turn was (a collection, or anything else that held
it: a burst of pings, many arrivals at once, the process waiting for a core). A GC
callback costs about a microsecond per collection; the stall watch is one timer callback
every 10 ms on the server's loop (uvloop's ``new_event_loop``, wrapped before uvicorn
calls it).
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
_stalls: list[tuple[float, float]] = []  # (when the loop was due, seconds late), >= STALL
TICK = 0.01  # the stall watch's period, seconds
STALL = 0.005  # lateness recorded: less is timer granularity (uvloop's clock is in ms)


def _callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.monotonic()
    else:
        _pauses.append((info["generation"], _started[0], time.monotonic() - _started[0]))


def _dump(path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"pauses": _pauses[:], "stalls": _stalls[:]}, fh)
    os.replace(tmp, path)


def _dumper(path: str) -> None:
    while True:
        time.sleep(0.5)
        _dump(path)


def _tick(loop: Any, due: float) -> None:
    late = time.monotonic() - due
    if late >= STALL:
        _stalls.append((due, late))
    loop.call_later(TICK, _tick, loop, time.monotonic() + TICK)


def _watch_loops() -> None:
    """Every uvloop loop made from now on runs the stall watch."""
    try:
        import uvloop
    except ImportError:
        return
    made = uvloop.new_event_loop

    def new_event_loop() -> Any:
        loop = made()
        loop.call_soon(_tick, loop, time.monotonic())
        return loop

    uvloop.new_event_loop = new_event_loop


def main() -> None:
    out, module, *args = sys.argv[1:]
    gc.callbacks.append(_callback)
    _watch_loops()
    threading.Thread(target=_dumper, args=(out,), daemon=True).start()
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        _dump(out)


def pauses(path: str, since: float = 0.0, until: float = float("inf")) -> dict[str, Any]:
    """Full (generation 2) collections that started in [since, until], and their longest;
    the event loop's stalls of 20 ms or more in that window, and its longest."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        data = {"pauses": []}
    window = [p for p in data["pauses"] if since <= p[1] <= until]
    full = [p[2] for p in window if p[0] == 2]
    stalls = [s[1] for s in data.get("stalls", []) if since <= s[0] <= until]
    return {
        "full": len(full),
        "full_max_ms": max(full, default=0.0) * 1000,
        "any_max_ms": max((p[2] for p in window), default=0.0) * 1000,
        "stalls": sum(1 for s in stalls if s >= 0.02),
        "stall_max_ms": max(stalls, default=0.0) * 1000,
    }


if __name__ == "__main__":
    main()
