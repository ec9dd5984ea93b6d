"""Disconnect to archive: how long after a browser closes its stream the archive exists.

archiver runs with ``ARCHIVER_DISCONNECT_GRACE=0`` (and the echo responder without
delay or rate limit, to write the dialogs quickly). The client process
(bench/load.py) gives each of 400 users a 10-message dialog (5 chats through
``POST /chat``), holds 10,000 subscriptions in all, then closes the 400 users' streams:
200 one every 20 ms, then 200 at once. Each close is timed to the moment its archive
file appears in the user's ``archived/`` directory (inotify, in the client).

Floor, in the same run: the bare ASGI app of bench/floors.py holding as many streams,
which on each of those users' disconnects renames a prepared ``current.yaml`` into
``archived/`` on the event loop: noticing the close plus one rename.

Run: ``python -m bench archive`` (``--quick``: 300 held, 20 + 20 closed).
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from archiver.journal import Journal
from archiver.layout import user_dir_name
from bench.live import percentile, run_client, running, start_archiver, start_floor

FULL = {"held": 10000, "closed": 200, "pace": 0.02, "chats": 5}
QUICK = {"held": 300, "closed": 20, "pace": 0.01, "chats": 5}


def _floor_dialogs(data: Path, users: list[str], messages: int) -> dict[str, str]:
    """A ``messages``-message journal per user, where the floor app renames it from."""
    journal = Journal(data / "journal", fsync="no")
    dirs = {}
    for user in users:
        for i in range(messages):
            journal.append(user, "user" if i % 2 == 0 else "assistant", f"message {i}")
        directory = data / user
        (directory / "archived").mkdir(parents=True)
        journal.layout.current_path(user).rename(directory / "current.yaml")
        dirs[user] = str(directory / "archived")
    return dirs


def measure(quick: bool) -> dict[str, dict[str, Any]]:
    scale = QUICK if quick else FULL
    paced = [f"paced-{i}" for i in range(int(scale["closed"]))]
    burst = [f"burst-{i}" for i in range(int(scale["closed"]))]
    config: dict[str, Any] = {"held": scale["held"], "pace": scale["pace"]}
    config |= {"paced": paced, "burst": burst}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = start_archiver(root, disconnect_grace="0", echo_delay="0", rate_limit="0")
        with running(server):
            assert server.data is not None
            dirs = {
                u: str(server.data / "users" / user_dir_name(u) / "dialogs" / "archived")
                for u in paced + burst
            }
            results["archiver"] = run_client(
                "archive",
                {
                    **config,
                    "port": server.port,
                    "chats": scale["chats"],
                    "dirs": dirs,
                    "floor": False,
                },
                timeout=600,
            )
        floor = start_floor(root, "asgi")
        with running(floor):
            assert floor.data is not None
            dirs = _floor_dialogs(floor.data, paced + burst, 2 * int(scale["chats"]))
            results["bare ASGI + rename"] = run_client(
                "archive",
                {**config, "port": floor.port, "chats": 0, "dirs": dirs, "floor": True},
                timeout=600,
            )
    return results


def _cells(ms: list[float]) -> str:
    if not ms:
        return f"{'-':>8}{'-':>8}{'-':>8}"
    return f"{statistics.median(ms):8.1f}{percentile(ms, 0.99):8.1f}{max(ms):8.1f}"


def run(quick: bool = False, out: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    scale = QUICK if quick else FULL
    results = measure(quick)
    closed, held = int(scale["closed"]), int(scale["held"])
    out(
        f"disconnect -> archive file, ms: {held:,} streams held; {closed} users (10-message "
        f"dialogs) close one every {scale['pace'] * 1000:.0f} ms, then {closed} at once"
    )
    out(
        f"{'':20}{'paced p50':>10}{'p99':>8}{'max':>8}{'burst p50':>11}{'p99':>8}{'max':>8}"
        f"{'missing':>9}"
    )
    p99 = {}
    for name, result in results.items():
        paced, burst = result["paced"], result["burst"]
        p99[name] = (percentile(paced["ms"], 0.99), percentile(burst["ms"], 0.99))
        out(
            f"{name:20}  {_cells(paced['ms'])}   {_cells(burst['ms'])}"
            f"{paced['missing'] + burst['missing']:9d}"
        )
    a, f = p99["archiver"], p99["bare ASGI + rename"]
    out(f"{'/ floor (p99)':20}{'':10}{a[0] / f[0]:7.1f}x{'':19}{a[1] / f[1]:7.1f}x")
    out("(ARCHIVER_DISCONNECT_GRACE=0, ARCHIVER_FSYNC=everysec; target: paced p99 <= 25 ms)")
    return results
