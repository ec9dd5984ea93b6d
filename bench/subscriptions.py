"""Idle subscriptions and connect latency: archiver against sse-starlette and bare ASGI.

Each server runs alone, one after the other, on loopback; a separate client process
(bench/load.py) opens subscriptions in steps (1k, 5k, 10k, 20k) and reads the server's
RSS after each step settles: memory per subscription is (RSS - RSS before the first
subscription) / subscriptions. While 10k are held, new subscribers arrive at a steady
rate and each is timed from connect to its ``ready`` event (then closed); the GC pauses
of the server in that window come from bench/gcwatch.py. At 20k, every held stream must
get its ``: ping`` on time (no gap longer than 1.25 x ARCHIVER_PING_INTERVAL).

Floors, measured in the same run: a plain sse-starlette app (EventSourceResponse) and a
bare ASGI callable, both sending ``retry``, ``ready`` and pings like archiver.

Run: ``python -m bench subscriptions`` (``--quick``: 100 and 300 subscriptions).
"""

from __future__ import annotations

import json
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.live import (
    Client,
    Proc,
    listen_overflows,
    percentile,
    raise_nofile,
    running,
    start_archiver,
    start_floor,
)
from bench.load import token

PER_CLIENT = 8000  # subscriptions per client process (each has RLIMIT_NOFILE too)
FD_MARGIN = 100  # descriptors a server needs besides its streams (listener, logs, files)

FULL: dict[str, Any] = {
    "steps": [1000, 5000, 10000, 20000],
    "probe_at": 10000,
    "grow_rate": 500.0,
    "probes": 1000,
    "probe_rate": 200.0,
    "ping_interval": 5.0,
    "watch": 12.0,
    "settle": 2.0,
}
QUICK: dict[str, Any] = {
    "steps": [100, 300],
    "probe_at": 300,
    "grow_rate": 400.0,
    "probes": 50,
    "probe_rate": 100.0,
    "ping_interval": 0.5,
    "watch": 1.2,
    "settle": 0.3,
}


def servers(root: Path, ping: float) -> dict[str, Callable[[], Proc]]:
    return {
        # The process cap off: by default it stops a margin below the descriptor limit
        # (18,000 of 20,000 here), and this measures what the top step costs, not the cap.
        "archiver": lambda: start_archiver(root, ping_interval=str(ping), max_connections="0"),
        "sse-starlette": lambda: start_floor(root, "sse", ping_interval=str(ping)),
        "bare ASGI": lambda: start_floor(root, "asgi", ping_interval=str(ping)),
    }


def _shares(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if k < total % parts else 0) for k in range(parts)]


def _warm_up(server: Proc) -> None:
    """One subscription opened and closed: lazy imports and first-call caches happen now."""
    headers = {"Authorization": f"Bearer {token('warm-up')}"}
    with httpx.stream("GET", f"http://127.0.0.1:{server.port}/subscribe", headers=headers) as r:
        next(r.iter_raw())


def _probe(server: Proc, client: Client, count: int, rate: float, stay: bool) -> dict[str, Any]:
    overflows, preempted, cpu = listen_overflows(), server.preempted(), server.cpu_seconds()
    started = time.monotonic()
    client.send(json.dumps({"cmd": "probe", "count": count, "rate": rate, "stay": stay}))
    result = client.read()
    result["cpu"] = (server.cpu_seconds() - cpu) / (time.monotonic() - started)
    result["gc"] = server.gc_pauses(*result["window"])
    result["overflows"] = listen_overflows() - overflows
    result["preempted"] = server.preempted() - preempted
    return result


def measure_server(server: Proc, scale: dict[str, Any], steps: list[int]) -> dict[str, Any]:
    parts = max(1, -(-steps[-1] // PER_CLIENT))
    clients = [
        Client("subs", {"port": server.port, "prefix": f"c{k}-u"}, timeout=1200)
        for k in range(parts)
    ]
    held = [0] * parts  # per client
    try:
        _warm_up(server)
        time.sleep(scale["settle"])
        base = server.rss_kb()
        result: dict[str, Any] = {"base_kb": base, "steps": []}
        for step in steps:
            if step == scale["probe_at"]:
                # Grow to this step at a steady rate, timing every arrival: CPython's full
                # collections come with growth, so this window meets them.
                grow = _probe(server, clients[0], step - sum(held), scale["grow_rate"], True)
                held[0] = grow["held"]
                result["grow"] = grow
            else:
                more = _shares(step - sum(held), parts)
                for k, client in enumerate(clients):
                    client.send(json.dumps({"cmd": "open", "total": held[k] + more[k]}))
                held = [client.read()["held"] for client in clients]
            time.sleep(scale["settle"])
            result["steps"].append({"held": sum(held), "rss_kb": server.rss_kb()})
            if step == scale["probe_at"]:
                # Then, holding it: subscribers that come and leave again.
                result["churn"] = _probe(
                    server, clients[0], scale["probes"], scale["probe_rate"], False
                )
                time.sleep(scale["settle"])
        command = {"cmd": "pings", "interval": scale["ping_interval"], "seconds": scale["watch"]}
        for client in clients:
            client.send(json.dumps(command))
        watched = [client.read() for client in clients]
        gaps = [gap for w in watched for gap in w["gaps"]]
        result["pings"] = {
            "held": len(gaps),
            "alive": sum(w["alive"] for w in watched),
            "late": sum(1 for gap in gaps if gap > scale["ping_interval"] * 1.25),
            "gap_p99_s": percentile(gaps, 0.99),
        }
        for client in clients:
            client.send(json.dumps({"cmd": "quit"}))
            client.read()
        result["gc_run"] = server.gc_pauses()
        return result
    finally:
        for client in clients:
            client.close()


def top_step(wanted: int) -> int:
    """``wanted``, or as many as this machine lets one process hold (RLIMIT_NOFILE)."""
    raise_nofile()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return min(wanted, (soft - FD_MARGIN) // 100 * 100)


def measure(quick: bool) -> dict[str, dict[str, Any]]:
    scale = QUICK if quick else FULL
    steps = [*scale["steps"][:-1], top_step(scale["steps"][-1])]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, start in servers(Path(tmp), float(scale["ping_interval"])).items():
            with running(start()) as server:
                results[name] = measure_server(server, scale, steps)
    return results


def run(quick: bool = False, out: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    results = measure(quick)
    scale = QUICK if quick else FULL
    steps = [s["held"] for s in results["archiver"]["steps"]]
    out("idle subscriptions: server RSS per subscription, KB ((RSS - RSS at 0) / held)")
    out(
        f"{'':16}"
        + "".join(f"{f'{n:,}':>10}" for n in steps)
        + f"{'RSS at max':>12}"
        + f"{'pings late':>12}{'gap p99':>9}"
    )
    per_sub: dict[str, list[float]] = {}
    for name, result in results.items():
        base = result["base_kb"]
        per_sub[name] = [(s["rss_kb"] - base) / s["held"] for s in result["steps"]]
        pings = result["pings"]
        late = f"{pings['late']}/{pings['held']}"
        out(
            f"{name:16}"
            + "".join(f"{kb:10.1f}" for kb in per_sub[name])
            + f"{result['steps'][-1]['rss_kb'] / 1024:9.0f} MB{late:>12}"
            + f"{pings['gap_p99_s']:8.2f}s"
        )
    for floor in ("sse-starlette", "bare ASGI"):
        ratios = [a / f for a, f in zip(per_sub["archiver"], per_sub[floor], strict=True)]
        out(f"{'/ ' + floor:16}" + "".join(f"{r:9.2f}x" for r in ratios))
    out(
        f"(ping interval {scale['ping_interval']} s; late: a gap over 1.25x it; target: "
        "archiver <= 25 KB per subscription, 20k held with pings on time)"
    )
    if steps[-1] < scale["steps"][-1]:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        out(
            f"(the last step is {steps[-1]:,}, not {scale['steps'][-1]:,}: this machine's hard "
            f"RLIMIT_NOFILE is {limit:,} and cannot be raised here)"
        )
    out("")
    held = scale["probe_at"]
    before = steps[steps.index(held) - 1]
    out(
        f"connect latency, new subscriber to `ready`, ms: growing {before:,} -> {held:,} at "
        f"{scale['grow_rate']:.0f}/s (they stay), then holding {held:,}: {scale['probes']:,} "
        f"more at {scale['probe_rate']:.0f}/s (they leave)"
    )
    out(
        f"{'':16}{'growing p50':>12}{'p99':>7}{'max':>7}{'full GCs':>9}{'longest':>8}"
        f"{'holding p50':>13}{'p99':>7}{'max':>7}{'full GCs':>9}{'longest':>8}{'errors':>7}"
    )
    p99s: dict[str, tuple[float, float]] = {}
    for name, result in results.items():
        cells = ""
        for phase, width in (("grow", 12), ("churn", 13)):
            ms, gc = result[phase]["ms"], result[phase]["gc"]
            cells += (
                f"{statistics.median(ms):{width}.1f}{percentile(ms, 0.99):7.1f}{max(ms):7.0f}"
                f"{gc['full']:9d}{gc['full_max_ms']:6.0f}ms"
            )
        errors = result["grow"]["errors"] + result["churn"]["errors"]
        p99s[name] = (
            percentile(result["grow"]["ms"], 0.99),
            percentile(result["churn"]["ms"], 0.99),
        )
        out(f"{name:16}{cells}{errors:7d}")
    for floor in ("sse-starlette", "bare ASGI"):
        a, f = p99s["archiver"], p99s[floor]
        out(f"{'/ ' + floor:16}{'':12}{a[0] / f[0]:6.2f}x{'':37}{a[1] / f[1]:6.2f}x")
    out(
        "(full GCs: generation-2 collections in the server in that window, and the longest; "
        "target: archiver p99 <= 100 ms)"
    )
    out("")
    _where(results, out)
    return results


def _where(results: dict[str, dict[str, Any]], out: Callable[[str], None]) -> None:
    """Where a connect's time goes, phase by phase: what makes the p99 jump."""
    out(
        "connect p99 by part, ms (tcp: the handshake, done by the kernel before any accept; "
        "head: to the status line; ready: to `ready`), and in the same window"
    )
    out(
        f"{'':16}{'phase':>8}{'tcp':>7}{'head':>7}{'ready':>7}{'stalls':>8}{'longest':>8}"
        f"{'full GC':>8}{'cpu':>6}{'preempted':>10}{'overflows':>10}{'client':>8}"
    )
    for name, result in results.items():
        for phase, label in (("grow", "growing"), ("churn", "holding")):
            r = result[phase]
            gc = r["gc"]
            out(
                f"{name if phase == 'grow' else '':16}{label:>8}"
                + "".join(f"{percentile(r.get(k, []), 0.99):7.1f}" for k in ("tcp", "head", "ms"))
                + f"{gc.get('stalls', 0):8d}{gc.get('stall_max_ms', 0.0):6.0f}ms"
                + f"{gc['full_max_ms']:6.0f}ms{r.get('cpu', 0.0):5.0%} {r.get('preempted', 0):9d}"
                + f"{r.get('overflows', 0):10d}{r.get('client_stall_max_ms', 0.0):6.0f}ms"
            )
    out(
        "(stalls: the server's event loop late by >= 20 ms, and its longest; full GC: the "
        "longest of those; cpu: the server's CPU time over the window's (100%: a core); "
        "preempted: times the kernel took the loop thread's core while it "
        "had work; overflows: connections a full listen backlog dropped (the whole machine); "
        "client: the load client's own longest stall)"
    )
