"""Chat throughput: chats per second and the time from POST to the final ``message`` event.

archiver runs the echo responder with ``ARCHIVER_ECHO_DELAY=0`` and
``ARCHIVER_RATE_LIMIT=0``; everything else as deployed (``ARCHIVER_FSYNC=everysec``,
the access log on). The client process (bench/load.py) runs N users, each with a
subscription and a keep-alive connection, each chatting in a loop: ``POST /chat``, then
wait for the response and for the assistant's ``message`` event on the subscription.
A chat is the user's message and the streamed reply journaled, and about ten events
(``message``, ``reply`` begin/items/end, ``message``) sent to the subscriber.

Floor, in the same run: a bare Starlette app whose ``POST /chat`` parses the JSON body
and answers JSON, driven by the same client and connections (no subscription).

Run: ``python -m bench chat`` (``--quick``: 8 users, 1.5 s).
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.live import percentile, run_client, running, start_archiver, start_floor

FULL = {"users": 50, "seconds": 10.0, "warmup": 1.0}
QUICK = {"users": 8, "seconds": 1.5, "warmup": 0.3}


def measure(quick: bool) -> dict[str, dict[str, Any]]:
    scale = QUICK if quick else FULL
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with running(start_floor(root, "json")) as floor:
            results["Starlette JSON"] = run_client(
                "chat", {**scale, "port": floor.port, "floor": True}, timeout=300
            )
        server = start_archiver(root, echo_delay="0", rate_limit="0")
        with running(server):
            results["archiver"] = run_client(
                "chat", {**scale, "port": server.port, "floor": False}, timeout=300
            )
    return results


def run(quick: bool = False, out: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    scale = QUICK if quick else FULL
    results = measure(quick)
    out(
        f"chat throughput: {scale['users']} users chatting in a loop for {scale['seconds']} s "
        "(archiver: POST /chat to the final `message` event; floor: POST to its response)"
    )
    out(f"{'':18}{'chats/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for name, result in results.items():
        ms = result["ms"]
        out(
            f"{name:18}{result['per_s']:9.0f}{statistics.median(ms):9.2f}"
            f"{percentile(ms, 0.99):9.2f}{result['errors']:8d}"
        )
    ratio = results["archiver"]["per_s"] / results["Starlette JSON"]["per_s"]
    out(f"{'archiver / floor':18}{ratio:8.2f}x")
    out("(echo responder, no delay, no rate limit; target: >= 1,500 chats/s and >= 0.5x floor)")
    return results
