"""``archiver serve --workers N``: N processes on one port, under uvicorn's supervisor.

The live tests run a real ``archiver serve --workers 2`` (ARCHIVER_WORKERS) with a real
redis-server as its broker, and tell the workers apart by the instance id each answers in
``/health`` (``<host>-<pid>-<hex>``) and by the ``worker=`` field of its log lines.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner

from archiver import serving
from archiver.cli import main
from archiver.config import Settings
from tests.helpers import (
    SECRET,
    RedisServer,
    Server,
    SSEClient,
    base_env,
    free_port,
    mint,
    wait_for,
)

Make = Callable[..., Server]


def test_workers_need_a_shared_broker() -> None:
    assert serving.refusal(Settings()) is None
    assert serving.refusal(Settings(workers=2, broker="redis://127.0.0.1:6379/0")) is None
    refused = serving.refusal(Settings(workers=2))
    assert refused is not None and "ARCHIVER_BROKER" in refused


@pytest.mark.parametrize(
    ("args", "env"), [(["--workers", "2"], {}), ([], {"ARCHIVER_WORKERS": "3"})]
)
def test_serve_refuses_workers_with_the_memory_broker_in_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    result = CliRunner().invoke(main, ["serve", "--data", str(tmp_path), *args], env=env)
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: --workers ") and "needs a shared broker" in line
    assert not (tmp_path / ".jwt-secret").exists(), "refused before touching the data"


def test_serve_refuses_zero_workers(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--data", str(tmp_path), "--workers", "0"])
    assert result.exit_code == 2 and "--workers" in result.stderr


def instance_of(server: Server) -> str:
    """The instance id of the worker that answers a new connection's ``/health``."""
    with httpx.Client(timeout=5) as client:  # a new connection: the kernel picks a worker
        return str(client.get(server.url + "/health").json()["instance"])


def pid_of(instance: str) -> int:
    return int(instance.split("-")[-2])


def two_workers(make_server: Make, redis: RedisServer, **settings: str) -> Server:
    return make_server(workers="2", broker=redis.url, **settings)


def instances_seen(server: Server, count: int = 2) -> set[str]:
    seen: set[str] = set()

    def both() -> set[str] | None:
        seen.add(instance_of(server))
        return seen if len(seen) >= count else None

    return wait_for(both, timeout=30, what=f"{count} workers answering", interval=0.01)


def test_two_workers_serve_one_port_from_two_processes(
    make_server: Make, redis_server: RedisServer
) -> None:
    server = two_workers(make_server, redis_server)
    instances = instances_seen(server)
    pids = {pid_of(i) for i in instances}
    assert len(pids) == 2 and server.proc is not None and server.proc.pid not in pids
    [started] = server.wait_log("workers.start")
    assert "workers=2" in started and f"port={server.port}" in started
    starts = server.wait_log("server.start", 2)
    assert {line.split(" worker=")[1].split()[0] for line in starts} == {"1", "2"}
    for pid in pids:
        assert any(f"pid={pid} " in line for line in starts)


def test_sigterm_drains_every_worker_and_archives_every_open_dialog(
    make_server: Make, redis_server: RedisServer
) -> None:
    server = two_workers(make_server, redis_server, disconnect_grace="3600")
    instances_seen(server)
    users = [f"u{n}" for n in range(12)]
    streams = [SSEClient(server.url, mint(user)) for user in users[:4]]
    for stream in streams:
        stream.next("ready")
    sent: dict[str, list[str]] = {user: [] for user in users}
    for round_ in range(2):  # each chat on a new connection: the users' chats land on both
        for user in users:
            text = f"{user} message {round_}"
            assert server.chat(user, text).status_code == 200
            sent[user].append(text)
    assert server.current() and len(server.current()) == len(users)
    server.signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0
    for stream in streams:
        stream.closed.wait(10)
        assert stream.find("shutdown"), stream.describe()
        stream.close()
    assert server.current() == [], "every open dialog archived"
    for user in users:
        [archive] = server.archives(user)
        doc = yaml.safe_load(archive.read_text())
        texts = [m["text"] for m in doc["messages"] if m["role"] == "user"]
        assert texts == sent[user], f"{user}: no accepted message lost"
        assert doc["reason"] == "shutdown"
    assert len(server.log_lines("shutdown.done")) == 2
    [stopped] = server.log_lines("workers.stop")
    assert "exits=0,0" in stopped


def test_a_worker_that_dies_is_logged_once_and_replaced(
    make_server: Make, redis_server: RedisServer
) -> None:
    server = two_workers(make_server, redis_server)
    victim = sorted(instances_seen(server))[0]
    mark = server.log_mark()
    os.kill(pid_of(victim), signal.SIGKILL)
    [died] = server.wait_log("worker.died", since=mark, timeout=60)
    assert f"pid={pid_of(victim)} " in died and "exit=SIGKILL" in died and "restart=true" in died
    number = died.split(" worker=")[1].split()[0]
    [restarted] = server.wait_log("server.start", since=mark, timeout=60)
    assert f" worker={number} " in restarted
    survivors = instances_seen(server)
    assert victim not in survivors and len(survivors) == 2
    server.signal(signal.SIGINT)  # ^C: the same graceful end as SIGTERM
    assert server.wait(timeout=60) == 0
    assert len(server.log_lines("worker.died")) == 1


def test_workers_never_join_another_server_on_a_taken_port(tmp_path: Path) -> None:
    # Another server's listeners with SO_REUSEPORT, as a second `serve --workers` has:
    # our own reuse-port sockets could bind beside it; uvicorn's plain bind, first, cannot.
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = base_env(tmp_path, jwt_secret=SECRET, broker="redis://127.0.0.1:1/0", workers="2")
        result = subprocess.run(
            [sys.executable, "-m", "archiver", "serve", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 3, result.stderr  # uvicorn's STARTUP_FAILURE, as for one process
    assert "address already in use" in result.stderr.lower()
    assert "workers.start" not in result.stderr


def worker_of(line: str) -> str:
    return line.split(" worker=")[1].split()[0]


def test_a_tab_on_one_worker_gets_live_the_reply_to_a_chat_another_worker_took(
    make_server: Make, redis_server: RedisServer
) -> None:
    server = two_workers(make_server, redis_server)
    instances_seen(server)
    tab = SSEClient(server.url, mint("tab"))
    tab.next("ready")
    [connected] = server.wait_log("sse.connect")
    streaming = worker_of(connected)
    taken_by: list[str] = []
    for n in range(60):  # each chat on a new connection: the kernel picks the worker
        mark = server.log_mark()
        response = server.chat("tab", f"message {n}")
        assert response.status_code == 200
        reply = response.json()["reply"]
        wait_for(
            lambda r=reply: tab.find("message", lambda e: e.data["seq"] == r["seq"]),
            what=f"the reply to chat {n} on the open tab",
            show=tab.describe,
        )
        [done] = server.wait_log("reply.done", since=mark)
        taken_by.append(worker_of(done))
        if taken_by[-1] != streaming:
            break
    assert taken_by[-1] != streaming, f"every chat went to worker {streaming}: {taken_by}"
    [message] = tab.find("message", lambda e: e.data["seq"] == reply["seq"])
    assert message.data["text"] == reply["text"] and message.conn == 0, "live, not replayed"
    ends = wait_for(
        lambda: len(tab.find("reply", lambda e: e.data["type"] == "end")) == len(taken_by),
        what="every reply streamed, the last one's too",
        show=tab.describe,
    )
    assert ends
    assert {e.conn for e in tab.snapshot()} == {0}, "the tab never reconnected"
    tab.close()


def test_workers_that_cannot_start_stop_them_all(make_server: Make) -> None:
    # Redis unreachable: every worker's start-up fails the same way, so none is restarted.
    server = make_server(workers="2", broker=f"redis://127.0.0.1:{free_port()}/0", start=False)
    server.spawn()
    assert server.wait(timeout=60) == 3  # uvicorn's STARTUP_FAILURE, as for one process
    [died] = server.log_lines("worker.died")
    assert "exit=3" in died and "restart=false" in died
    assert "server.start" not in server.log()


def test_serve_refuses_reload_with_workers(tmp_path: Path) -> None:
    env = {"ARCHIVER_BROKER": "redis://127.0.0.1:6379/0"}
    args = ["serve", "--data", str(tmp_path), "--workers", "2", "--reload"]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert "--reload runs one process" in line


def test_sigterm_with_chats_in_flight_loses_no_accepted_message(
    make_server: Make, redis_server: RedisServer
) -> None:
    server = two_workers(make_server, redis_server, echo_delay="0.02")
    instances_seen(server)
    accepted: dict[str, list[str]] = {f"busy{n}": [] for n in range(6)}
    stop = threading.Event()

    def chat_loop(user: str) -> None:
        for n in range(10_000):
            if stop.is_set():
                return
            text = f"{user} says {n}"
            try:
                response = server.chat(user, text)
            except httpx.HTTPError:
                return  # the port is closed: the server is gone
            if response.status_code == 200:
                accepted[user].append(text)
            elif response.status_code == 503:
                return  # draining
            else:
                raise AssertionError(f"{user}: {response.status_code} {response.text}")

    threads = [threading.Thread(target=chat_loop, args=(u,), daemon=True) for u in accepted]
    for thread in threads:
        thread.start()
    wait_for(lambda: sum(map(len, accepted.values())) >= 30, timeout=60, what="30 chats")
    server.signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert server.current() == []
    for user, texts in accepted.items():
        kept = [
            m["text"]
            for archive in server.archives(user)
            for m in yaml.safe_load(archive.read_text())["messages"]
            if m["role"] == "user"
        ]
        assert [t for t in kept if t in texts] == texts, f"{user}: every 2xx chat once, in order"
