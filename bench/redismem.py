"""Memory per idle subscription with the Redis broker, against the memory broker.

The method of ``python -m bench subscriptions``: each server runs alone, a separate
client process (bench/load.py ``subs``) opens subscriptions in steps, and after each step
settles the server's RSS is read: per subscription, (RSS - RSS before the first) / held.
Two archivers, one after the other: the memory broker (the floor, same run) and the
Redis broker (a redis-server of the run's own). For the Redis one, redis-server's own
``used_memory`` per subscription too: what presence costs the broker.

Run: ``python -m bench redismem`` (``--quick``: 100 and 300 subscriptions).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.cluster import cannot_run, load_average, redis_url, redis_used_memory, start_redis
from bench.live import Client, Proc, running, start_archiver
from bench.subscriptions import PER_CLIENT, _shares, _warm_up, top_step

FULL: dict[str, Any] = {"steps": [1000, 5000, 10000], "settle": 2.0}
QUICK: dict[str, Any] = {"steps": [100, 300], "settle": 0.3}
FLOOR = "memory broker"
REDIS = "redis broker"


def measure_server(
    server: Proc, steps: list[int], settle: float, redis: Proc | None
) -> dict[str, Any]:
    parts = max(1, -(-steps[-1] // PER_CLIENT))
    clients = [
        Client("subs", {"port": server.port, "prefix": f"c{k}-u"}, timeout=1200)
        for k in range(parts)
    ]
    try:
        _warm_up(server)
        time.sleep(settle)
        base = server.rss_kb()
        redis_base = redis_used_memory(redis) if redis is not None else 0
        result: dict[str, Any] = {"base_kb": base, "steps": []}
        held = [0] * parts
        for step in steps:
            more = _shares(step - sum(held), parts)
            for k, client in enumerate(clients):
                client.send(json.dumps({"cmd": "open", "total": held[k] + more[k]}))
            held = [client.read()["held"] for client in clients]
            time.sleep(settle)
            row = {"held": sum(held), "rss_kb": server.rss_kb()}
            if redis is not None:
                row["redis_bytes"] = redis_used_memory(redis) - redis_base
            result["steps"].append(row)
        for client in clients:
            client.send(json.dumps({"cmd": "quit"}))
            client.read()
        return result
    finally:
        for client in clients:
            client.close()


def measure(quick: bool) -> dict[str, dict[str, Any]]:
    scale = QUICK if quick else FULL
    steps = [*scale["steps"][:-1], top_step(scale["steps"][-1])]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with running(start_archiver(root, "memory")) as server:
            results[FLOOR] = measure_server(server, steps, scale["settle"], None)
        redis = start_redis(root)
        with running(redis), running(start_archiver(root, "redis", broker=redis_url(redis))) as s:
            results[REDIS] = measure_server(s, steps, scale["settle"], redis)
    return results


def run(quick: bool = False, out: Callable[[str], None] = print) -> dict[str, Any] | None:
    out("idle subscriptions by broker: server RSS per subscription, KB ((RSS - RSS at 0) / held)")
    if cannot_run(out):
        return None
    load = load_average()
    results = measure(quick)
    steps = [s["held"] for s in results[FLOOR]["steps"]]
    out(f"{'':22}" + "".join(f"{f'{n:,}':>10}" for n in steps) + f"{'RSS at max':>12}")
    per_sub = {}
    for name, result in results.items():
        per_sub[name] = [(s["rss_kb"] - result["base_kb"]) / s["held"] for s in result["steps"]]
        top = result["steps"][-1]["rss_kb"] / 1024
        out(f"{name:22}" + "".join(f"{kb:10.1f}" for kb in per_sub[name]) + f"{top:9.0f} MB")
    diffs = [r - m for r, m in zip(per_sub[REDIS], per_sub[FLOOR], strict=True)]
    out(f"{'redis - memory':22}" + "".join(f"{d:+10.1f}" for d in diffs))
    in_redis = [s["redis_bytes"] / 1024 / s["held"] for s in results[REDIS]["steps"]]
    out(f"{'redis-server, KB':22}" + "".join(f"{kb:10.2f}" for kb in in_redis))
    out("(redis-server: its used_memory per subscription; target: redis - memory <= 2 KB)")
    out(f"(load average, 1 min: {load:.2f} at the start, {load_average():.2f} at the end)")
    return results
