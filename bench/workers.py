"""Chat throughput with ``archiver serve --workers 1`` and ``--workers 2`` on the Redis broker.

Three servers, one after the other, each with the echo responder and no delay and no
rate limit: the memory broker in one process (what ``python -m bench chat`` measures),
then the Redis broker (a redis-server of the run's own) with one worker and with two on
one port. The same client (bench/load_cluster.py ``chat``: bench/load.py's chat loop)
drives each: N users, each with a subscription and a keep-alive connection, chatting in a
loop; a chat counts once the assistant's ``message`` reached the user's stream. With two
workers the kernel spreads the connections, so a user's stream and chat are often on
different workers: their replies cross the broker. A reply that never arrives is
counted as lost (after 2 s), not waited for.

The memory broker's single process is the floor the two others are read against.

Run: ``python -m bench workers`` (``--quick``: 8 users, 1.5 s each).
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.cluster import cannot_run, load_average, redis_url, start_redis
from bench.live import Proc, percentile, run_client, running, start_archiver

FULL = {"users": 50, "seconds": 10.0, "warmup": 1.0, "wait": 2.0}
QUICK = {"users": 8, "seconds": 1.5, "warmup": 0.3, "wait": 2.0}
SERVER = {"echo_delay": "0", "rate_limit": "0"}
FLOOR = "memory, 1 process"


def measure(quick: bool) -> dict[str, dict[str, Any]]:
    scale = QUICK if quick else FULL
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with running(start_redis(root)) as redis:
            starts: dict[str, Callable[[], Proc]] = {
                FLOOR: lambda: start_archiver(root, "memory", **SERVER),
                "redis, --workers 1": lambda: start_archiver(
                    root, "redis-1", broker=redis_url(redis), **SERVER
                ),
                "redis, --workers 2": lambda: start_archiver(
                    root, "redis-2", broker=redis_url(redis), workers="2", **SERVER
                ),
            }
            for name, start in starts.items():
                with running(start()) as server:
                    config = {**scale, "port": server.port}
                    results[name] = run_client(
                        "chat", config, timeout=300, module="bench.load_cluster"
                    )
                    results[name]["spread"] = spread(server.log())
    return results


def spread(log: str) -> dict[str, dict[str, int]]:
    """Per worker (its ``worker=`` log field), the streams it opened and chats it took."""
    counts: dict[str, dict[str, int]] = {"streams": {}, "chats": {}}
    for line in log.splitlines():
        kind = "streams" if " sse.connect " in line else None
        if " http.request " in line and "path=/chat " in line:
            kind = "chats"
        if kind is None or " worker=" not in line:
            continue
        worker = line.split(" worker=")[1].split()[0]
        counts[kind][worker] = counts[kind].get(worker, 0) + 1
    return counts


def run(quick: bool = False, out: Callable[[str], None] = print) -> dict[str, Any] | None:
    scale = QUICK if quick else FULL
    out(
        f"chat throughput by workers: {scale['users']} users chatting in a loop for "
        f"{scale['seconds']} s (POST /chat to the final `message` event on the user's stream)"
    )
    if cannot_run(out):
        return None
    load = load_average()
    results = measure(quick)
    out(f"{'':20}{'chats/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'lost':>6}")
    for name, result in results.items():
        ms = result["ms"]
        p50 = statistics.median(ms) if ms else float("nan")
        out(
            f"{name:20}{result['per_s']:9.0f}{p50:9.2f}{percentile(ms, 0.99):9.2f}"
            f"{result['errors']:8d}{result['lost']:6d}"
        )
    floor = results[FLOOR]["per_s"] or float("nan")
    for name in list(results)[1:]:
        out(f"{name + ' / floor':30}{results[name]['per_s'] / floor:6.2f}x")
    for name, result in results.items():
        cells = [
            f"{kind} " + "/".join(str(n) for _, n in sorted(result["spread"][kind].items()))
            for kind in ("streams", "chats")
            if len(result["spread"][kind]) > 1
        ]
        if cells:
            out(f"{name}, per worker: " + ", ".join(cells))
    out("(echo responder, no delay, no rate limit; lost: no reply on the stream within 2 s)")
    out(f"(load average, 1 min: {load:.2f} at the start, {load_average():.2f} at the end)")
    return results
