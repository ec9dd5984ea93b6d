"""Drain: SIGTERM with 10,000 connected users, each with a 10-message dialog.

archiver runs as deployed (``ARCHIVER_SHUTDOWN_TIMEOUT=10``, ``ARCHIVER_FSYNC=everysec``).
Once it is up, the benchmark writes each user's 10-message dialog with
:class:`archiver.journal.Journal` (the bytes 5 chats would append; 50,000 chats through
HTTP would only make the run longer), then the client process (bench/load.py)
subscribes every user and the benchmark sends SIGTERM. Reported: seconds from SIGTERM to
the process's exit; dialogs archived; streams that got the ``shutdown`` event and a clean
end of the response; and abrupt-close lines in the server's log ("ASGI callable returned
without completing response", "Cancel N running task(s)", tracebacks).

Floor, in the same run: the plain sse-starlette app of bench/floors.py holding as many
streams (no dialogs): sse-starlette's own SIGTERM handling, which cancels every stream.

Run: ``python -m bench drain`` (``--quick``: 300 users).
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from archiver.journal import Journal
from bench.live import Client, Proc, start_archiver, start_floor

FULL = {"held": 10000, "messages": 10}
QUICK = {"held": 300, "messages": 10}


def write_dialogs(data: Path, users: int, messages: int) -> None:
    journal = Journal(data, fsync="no")
    for n in range(users):
        user = f"u{n}"
        for i in range(messages):
            role = "user" if i % 2 == 0 else "assistant"
            journal.append(user, role, f"message {i} of {user}: how is my order doing?")
    # Written with fsync=no, for speed; the server's everysec policy would have synced
    # them within a second, so the drain must not pay for flushing them.
    os.sync()


def sigterm_while_held(server: Proc, held: int) -> dict[str, Any]:
    client = Client("drain", {"port": server.port, "held": held, "timeout": 60}, timeout=300)
    try:
        client.read()  # {"phase": "held"}
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(60)
        finally:
            exit_s = time.monotonic() - started
            if server.proc.poll() is None:
                server.proc.kill()
        result = client.read()
    finally:
        client.close()
    result["exit_s"] = exit_s
    result["streams_ended_s"] = max(0.0, result["last_end"] - started)
    result["abrupt"] = server.abrupt_lines()
    return result


def measure(quick: bool) -> dict[str, dict[str, Any]]:
    scale = QUICK if quick else FULL
    held = scale["held"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        floor = start_floor(root, "sse")
        results["sse-starlette"] = sigterm_while_held(floor, held)
        results["sse-starlette"]["archived"] = None
        server = start_archiver(root)
        assert server.data is not None
        write_dialogs(server.data, held, scale["messages"])
        results["archiver"] = sigterm_while_held(server, held)
        results["archiver"]["archived"] = len(list(server.data.glob("users/*/dialogs/archived/*")))
    return results


def run(quick: bool = False, out: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    scale = QUICK if quick else FULL
    results = measure(quick)
    held = scale["held"]
    out(f"drain: SIGTERM with {held:,} streams ({scale['messages']}-message dialogs for archiver)")
    out(
        f"{'':16}{'exit s':>8}{'streams s':>10}{'archived':>10}{'shutdown ev':>12}"
        f"{'clean ends':>11}{'abrupt':>8}"
    )
    for name, r in results.items():
        archived = "-" if r["archived"] is None else f"{r['archived']:,}"
        out(
            f"{name:16}{r['exit_s']:8.2f}{r['streams_ended_s']:10.2f}{archived:>10}"
            f"{r['shutdown_events']:12,}{r['clean_ends']:11,}{r['abrupt']:8,}"
        )
    ratio = results["archiver"]["exit_s"] / results["sse-starlette"]["exit_s"]
    out(f"{'/ sse-starlette':16}{ratio:7.2f}x")
    out(
        "(streams s: SIGTERM to the last stream's end, seen by the client; abrupt: log lines of "
        "cut streams; target: exit <= 5 s, all archived, 0 abrupt)"
    )
    return results
