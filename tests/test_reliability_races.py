"""Races: two ``archiver serve`` processes on one data directory, and users who chat,
subscribe, disconnect, reconnect within the grace and archive, each op on either process,
while both sweepers run every 0.1 s and users pause past the session timeout. Every
message that got a 2xx is in exactly one file, in order, next to its reply.

    pytest tests/test_reliability_races.py                   # 2,400 operations
    ARCHIVER_SOAK=1 pytest tests/test_reliability_races.py   # 12,000 operations
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.helpers import ONE_ADDRESS_MANY_CLIENTS, Server, SSEClient, mint, soak
from tests.invariants import Tally, check_exactly_once, stray_files

Make = Callable[..., Server]
OPERATIONS = soak(2_400, 12_000)
USERS = [f"race{i}" for i in range(16)]


def test_two_processes_many_users_every_kind_of_operation_exactly_once(
    make_server: Make, tmp_path: Path
) -> None:
    settings = {
        "disconnect_grace": "0.15",
        "session_timeout": "0.3",
        "sweep_interval": "0.1",
        "ping_interval": "0.5",
        "echo_delay": "0",
        "rate_limit": "0",
        **ONE_ADDRESS_MANY_CLIENTS,
    }
    data = tmp_path / "data"
    servers = [make_server(data=data, **settings), make_server(data=data, **settings)]
    accepted: dict[str, list[tuple[str, str]]] = {u: [] for u in USERS}
    ops: Counter[str] = Counter()
    lock = threading.Lock()
    per_user = OPERATIONS // len(USERS)

    def worker(user: str, seed: int) -> None:
        rng = random.Random(seed)
        clients = [
            httpx.Client(base_url=s.url, headers=s.headers(user), timeout=30) for s in servers
        ]
        sse: SSEClient | None = None
        last_id: str | None = None
        done: Counter[str] = Counter()

        def subscribe(last: str | None) -> SSEClient:
            client = SSEClient(rng.choice(servers).url, mint(user), last_event_id=last)
            client.next("ready")
            return client

        def close() -> str | None:
            nonlocal sse
            if sse is None:
                return last_id
            ids = [e.id for e in sse.seen if e.id]
            sse.close()
            sse = None
            return ids[-1] if ids else last_id

        try:
            for i in range(per_user):
                roll = rng.random()
                if roll < 0.12:
                    last_id = close()
                    sse = subscribe(None)
                    done["subscribe"] += 1
                elif roll < 0.20:
                    last_id = close()
                    done["disconnect"] += 1
                elif roll < 0.28:
                    last_id = close()  # ...and back at once: within the grace
                    sse = subscribe(last_id)
                    done["reconnect"] += 1
                elif roll < 0.35:
                    # This user pauses past the session timeout: a sweeper archives the
                    # dialog (the pause is the load, not a wait for anything).
                    time.sleep(0.35)
                    done["idle"] += 1
                elif roll < 0.40:
                    response = rng.choice(clients).post("/dialog/archive")
                    assert response.status_code == 200, response.text
                    done["archive"] += 1
                else:
                    text = f"{user} {i} {rng.random():.8f}"
                    response = rng.choice(clients).post("/chat", json={"message": text})
                    assert response.status_code == 200, response.text
                    accepted[user].append((text, response.json()["reply"]["text"]))
                    done["chat"] += 1
        finally:
            close()
            for client in clients:
                client.close()
            with lock:
                ops.update(done)

    threads = [threading.Thread(target=worker, args=(u, n)) for n, u in enumerate(USERS, start=31)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
        assert not thread.is_alive()
    assert sum(ops.values()) == per_user * len(USERS) >= OPERATIONS - len(USERS)
    sweeps = sum(len(s.log_lines("sweep.run")) for s in servers)
    for server in servers:
        server.stop()
        assert server.proc is not None and server.proc.returncode == 0
    tally = Tally()
    for user in USERS:
        check_exactly_once(data / "users", user, accepted[user], tally)
    assert stray_files(data) == []
    logs = "".join(s.log() for s in servers)
    assert "Traceback" not in logs and "request.failed" not in logs
    print(
        f"\nraces: {sum(ops.values())} operations {dict(ops)}, {sweeps} sweeps, "
        f"{tally.files} files, archives by reason {dict(tally.reasons)}, "
        f"moved {logs.count(' session.moved ')}, skipped {logs.count(' archive.skipped ')}"
    )


def test_a_sweeper_leaves_alone_a_reply_streaming_on_another_process(
    make_server: Make, tmp_path: Path
) -> None:
    """A reply longer than the session timeout, streaming on one process, while the other
    process's sweeper looks at the journal: the question and its answer stay together."""
    data = tmp_path / "data"
    streaming = make_server(data=data, echo_delay="0.1", session_timeout="0.3")
    make_server(data=data, session_timeout="0.3", sweep_interval="0.1")
    text = "one two three four five six seven eight nine ten"
    response = streaming.chat("slowpoke", text)
    assert response.status_code == 200
    check_exactly_once(data / "users", "slowpoke", [(text, response.json()["reply"]["text"])])
