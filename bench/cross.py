"""Cross-instance delivery: a chat taken by instance Y, to the user's stream on instance X.

Two ``archiver serve`` processes, X and Y, share one data directory and one
redis-server (``ARCHIVER_BROKER``), with the echo responder and no delay. The client
process (bench/load_cluster.py ``cross``) subscribes every user on X, then chats at a
steady rate, alternately on X and on Y, one chat per user at a time, and times each from
the POST to the user's own ``message`` event on the stream on X: the journal's append,
the publish and, for Y, the broker's hop.

Floor, in the same run and interleaved with it: the same chats POSTed to X, the
instance holding the stream (same-instance delivery). The difference is what crossing
instances costs.

Run: ``python -m bench cross`` (``--quick``: 10 users, 200 chats).
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.cluster import cannot_run, load_average, start_instance, start_redis
from bench.live import percentile, run_client, running

FULL = {"users": 50, "chats": 4000, "rate": 200.0, "warmup": 200, "wait": 2.0}
QUICK = {"users": 10, "chats": 200, "rate": 100.0, "warmup": 20, "wait": 2.0}
SERVER = {"echo_delay": "0", "rate_limit": "0", "disconnect_grace": "3600"}


def measure(quick: bool) -> dict[str, Any]:
    scale = QUICK if quick else FULL
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "shared-data"
        with (
            running(start_redis(root)) as redis,
            running(start_instance(root, "x", redis, data, **SERVER)) as x,
            running(start_instance(root, "y", redis, data, **SERVER)) as y,
        ):
            config = {**scale, "x": x.port, "y": y.port}
            return run_client("cross", config, timeout=600, module="bench.load_cluster")


def run(quick: bool = False, out: Callable[[str], None] = print) -> dict[str, Any] | None:
    scale = QUICK if quick else FULL
    out(
        f"cross-instance delivery: {scale['users']} users streaming from X, "
        f"{scale['chats']:,} chats at {scale['rate']:.0f}/s, alternately POSTed to X and Y "
        "(POST /chat to the user's `message` event on X)"
    )
    if cannot_run(out):
        return None
    load = load_average()
    result = measure(quick)
    out(f"{'':24}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'chats':>7}{'missing':>9}")
    rows = (("same instance (floor)", "same"), ("cross instance (Y->X)", "cross"))
    for label, kind in rows:
        ms = result["ms"][kind]
        p50 = statistics.median(ms) if ms else float("nan")
        top = max(ms) if ms else float("nan")
        out(
            f"{label:24}{p50:8.2f}{percentile(ms, 0.99):8.2f}{top:8.1f}"
            f"{len(ms):7d}{result['missing'][kind]:9d}"
        )
    same, cross = result["ms"]["same"], result["ms"]["cross"]
    if same and cross:
        out(
            f"{'cross - same':24}{statistics.median(cross) - statistics.median(same):8.2f}"
            f"{percentile(cross, 0.99) - percentile(same, 0.99):8.2f}"
        )
    out(
        f"(errors {result['errors']}; missing: no `message` within {scale['wait']:.0f} s; "
        "target: cross p99 <= 10 ms on loopback)"
    )
    out(f"(load average, 1 min: {load:.2f} at the start, {load_average():.2f} at the end)")
    return result
