"""Clients that misbehave: vanish without FIN/RST, stop reading, or come and go by the
thousand; and SIGTERM in the middle of it all.

* Vanishing: the subscriber lives in a network namespace made for the test, behind a veth
  pair; its link goes down, so nothing it sends (FIN, RST) arrives and nothing arrives to
  it. The server must notice within ARCHIVER_TCP_USER_TIMEOUT + ARCHIVER_PING_INTERVAL
  (keepalive and TCP_USER_TIMEOUT on the listening socket, inherited by every accepted
  one), and archive the dialog as a disconnect. Needs root for ``ip netns``.
* Slow reader: stops reading; dropped after ARCHIVER_SEND_TIMEOUT, archived as
  disconnected, while another user chats and streams on.
* Churn: 1,000 connections (ARCHIVER_SOAK=1: minutes of it) with chats; afterwards RSS,
  open descriptors and asyncio tasks return to where they were.
* Shutdown under load: SIGTERM during churn and streaming replies.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers import (
    ONE_ADDRESS_MANY_CLIENTS,
    Server,
    SSEClient,
    mint,
    run_root,
    soak,
    unavailable,
    wait_for,
)
from tests.invariants import check_exactly_once

Make = Callable[..., Server]


# --------------------------------------------------------------------------------------
# A test host in a network namespace


@dataclass
class NetnsHost:
    """A namespace ``ns`` joined to this host by a veth pair: we are ``host_ip``."""

    ns: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str

    def run(self, *args: str, **kw: object) -> subprocess.Popen[str]:
        return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
            ["ip", "netns", "exec", self.ns, *args], text=True, **kw
        )

    def link_down(self) -> None:
        """The host vanishes: nothing it sends arrives, nothing reaches it, no FIN, no RST."""
        done = run_root("ip", "netns", "exec", self.ns, "ip", "link", "set", self.ns_if, "down")
        assert done.returncode == 0, done.stderr


@pytest.fixture
def test_host() -> Iterator[NetnsHost]:
    if os.geteuid() != 0:
        unavailable("needs root to create a network namespace (ip netns)")
    tag = f"{os.getpid() % 100000}"
    octet = os.getpid() % 250 + 1
    host = NetnsHost(
        ns=f"archiver-{tag}",
        host_if=f"arh{tag}",
        ns_if=f"arn{tag}",
        host_ip=f"10.231.{octet}.1",
        ns_ip=f"10.231.{octet}.2",
    )
    steps = [
        ("ip", "netns", "add", host.ns),
        ("ip", "link", "add", host.host_if, "type", "veth", "peer", "name", host.ns_if),
        ("ip", "link", "set", host.ns_if, "netns", host.ns),
        ("ip", "addr", "add", f"{host.host_ip}/30", "dev", host.host_if),
        ("ip", "link", "set", host.host_if, "up"),
        (
            "ip",
            "netns",
            "exec",
            host.ns,
            "ip",
            "addr",
            "add",
            f"{host.ns_ip}/30",
            "dev",
            host.ns_if,
        ),
        ("ip", "netns", "exec", host.ns, "ip", "link", "set", host.ns_if, "up"),
        ("ip", "netns", "exec", host.ns, "ip", "link", "set", "lo", "up"),
    ]
    try:
        for step in steps:
            done = run_root(*step)
            if done.returncode != 0:
                unavailable(f"{' '.join(step)} failed here: {done.stderr.strip()}")
        yield host
    finally:
        run_root("ip", "link", "del", host.host_if)
        run_root("ip", "netns", "del", host.ns)


# A subscriber to run inside the namespace: prints "ready" once subscribed, then holds on.
SUBSCRIBER = textwrap.dedent(
    """
    import socket, sys, time
    host, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    sock = socket.create_connection((host, port), timeout=20)
    sock.sendall(
        f"GET /subscribe HTTP/1.1\\r\\nHost: {host}\\r\\nAuthorization: Bearer {token}\\r\\n\\r\\n"
        .encode()
    )
    seen = b""
    while b"event: ready" not in seen:
        chunk = sock.recv(65536)
        if not chunk:
            sys.exit("closed before ready")
        seen += chunk
    print("ready", flush=True)
    sock.settimeout(None)
    time.sleep(300)
    """
)


def test_a_subscriber_that_vanishes_is_dropped_within_the_tcp_bound(
    make_server: Make, test_host: NetnsHost, tmp_path: Path
) -> None:
    """Three servers, each with one subscriber on the test host, which then vanishes:
    streaming pings with the bound, idle (keepalive only) with the bound, and a control
    without it that must still count its subscriber as connected when the others noticed."""
    timeout = 3.0
    common = {"disconnect_grace": "0", "echo_delay": "0"}
    servers = {
        "pings": make_server(
            data=tmp_path / "d1", tcp_user_timeout=str(timeout), ping_interval="1", **common
        ),
        "idle": make_server(
            data=tmp_path / "d2", tcp_user_timeout=str(timeout), ping_interval="3600", **common
        ),
        "control": make_server(
            data=tmp_path / "d3", tcp_user_timeout="0", ping_interval="1", **common
        ),
    }
    for server in servers.values():
        server.stop()
        server.host = test_host.host_ip
        server.start()
    clients = []
    try:
        for name, server in servers.items():
            assert server.chat("roamer", f"hello from {name}").status_code == 200
            client = test_host.run(
                sys.executable,
                "-c",
                SUBSCRIBER,
                server.host,
                str(server.port),
                mint("roamer"),
                stdout=subprocess.PIPE,
            )
            clients.append(client)
            assert client.stdout is not None
            assert client.stdout.readline().strip() == "ready"
            wait_for(lambda s=server: httpx.get(s.url + "/health").json()["connections"] == 1)
        test_host.link_down()
        vanished = time.monotonic()
        # Generous: the bound is timeout + ping interval (pings) or about timeout (idle).
        deadline = 3 * (timeout + 1) + 10
        for name in ("pings", "idle"):
            server = servers[name]
            wait_for(lambda s=server: s.log_lines("sse.disconnect"), deadline, f"{name} to notice")
            [archive] = wait_for(lambda s=server: s.archives("roamer"), 10, f"{name}'s archive")
            assert "reason: disconnect" in archive.read_text()
        noticed = time.monotonic() - vanished
        control = servers["control"]
        assert httpx.get(control.url + "/health").json()["connections"] == 1, (
            "without the bound the vanished subscriber still counts as connected"
        )
        assert control.archives("roamer") == []
        print(f"\nvanished subscriber noticed after {noticed:.1f} s (bound {timeout} s + ping)")
    finally:
        for client in clients:
            client.kill()
            client.wait(10)


# --------------------------------------------------------------------------------------
# A subscriber that stops reading


def _log_time(line: str) -> float:
    """The UTC time at the start of a log line, as a Unix time."""
    stamp = line.split(" ", 1)[0]
    whole, _, millis = stamp.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + int(millis) / 1000


def test_a_reader_that_stops_is_dropped_without_slowing_others(make_server: Make) -> None:
    server = make_server(
        send_timeout="3",
        disconnect_grace="0",
        echo_delay="0",
        rate_limit="0",
        **ONE_ADDRESS_MANY_CLIENTS,
        ping_interval="1",
    )
    # The slow reader: a tiny receive buffer, reads up to `ready`, then never again.
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", server.port))
    request = f"GET /subscribe HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {mint('slow')}\r\n\r\n"
    slow.sendall(request.encode())
    slow.settimeout(30)
    seen = b""
    while b"event: ready" not in seen:
        piece = slow.recv(4096)
        assert piece, "closed before ready"
        seen += piece
    fast = SSEClient(server.url, mint("fast"))
    fast.next("ready")
    accepted: dict[str, list[tuple[str, str]]] = {"slow": [], "fast": []}
    done_at: list[float] = []
    stop = threading.Event()

    def fast_user() -> None:
        with httpx.Client(base_url=server.url, headers=server.headers("fast"), timeout=30) as c:
            for i in range(10_000):
                if stop.is_set():
                    return
                text = f"fast {i}"
                response = c.post("/chat", json={"message": text})
                assert response.status_code == 200, response.text
                reply = response.json()["reply"]["text"]
                while fast.next("message").data["text"] != reply:
                    pass
                accepted["fast"].append((text, reply))
                done_at.append(time.time())

    # The other user chats from before the slow reader is flooded until it is dropped: on a
    # busy machine, starting it only once the flood is in would leave it the 3 s send
    # timeout or less to make its first round trip.
    worker = threading.Thread(target=fast_user)
    worker.start()
    try:
        # ~3 events of 60 KB per chat: far more than the socket buffers hold.
        flooded = 0.0  # from the first 60 KB event on, the slow reader's buffers fill
        for i in range(60):
            text = f"slow {i} " + "y" * 60_000
            response = server.chat("slow", text)
            assert response.status_code == 200, "publishing never waits for a reader"
            accepted["slow"].append((text, response.json()["reply"]["text"]))
            flooded = flooded or time.time()
        [line] = wait_for(lambda: server.log_lines("sse.send_timeout"), 30, "the slow drop")
        dropped = _log_time(line)
        stop.set()
        worker.join(30)
        fast.close()
        [archive] = wait_for(lambda: server.archives("slow"), 10, "the slow user's archive")
        assert "reason: disconnect" in archive.read_text()
        while_stuck = [t for t in done_at if flooded <= t <= dropped]
        assert while_stuck, (
            "the other user got replies while the slow reader was stuck",
            {"round trips": len(done_at), "flooded at": flooded, "dropped at": dropped},
        )
        for user, chats in accepted.items():
            check_exactly_once(server.data / "users", user, chats)
        print(f"\nfast round trips while the slow reader was stuck: {len(while_stuck)}")
    finally:
        stop.set()
        slow.close()


# --------------------------------------------------------------------------------------
# Churn: connections come and go by the thousand, with chats


@dataclass
class Usage:
    rss_kb: int
    fds: int
    tasks: int
    threads: int

    @classmethod
    def of(cls, server: Server) -> Usage:
        assert server.proc is not None
        status = Path(f"/proc/{server.proc.pid}/status").read_text()
        rss = int(
            next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]
        )
        fds = len(os.listdir(f"/proc/{server.proc.pid}/fd"))
        health = httpx.get(server.url + "/health", headers=server.headers("ops", admin=True))
        body = health.json()
        return cls(rss, fds, body["tasks"], body["threads"])


class Churn:
    """Subscriptions opened and closed (FIN or RST) ``count`` at a time, and chats."""

    def __init__(self, server: Server, users: list[str], seed: int) -> None:
        self.server = server
        self.users = users
        self.tokens = {u: mint(u) for u in users}
        self.rng = random.Random(seed)
        self.accepted: dict[str, list[tuple[str, str]]] = {u: [] for u in users}
        self.connections = 0
        self.chats = 0
        self.refused = 0

    async def subscribe(self, user: str, abort: bool, hold: float, chat: str | None) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        try:
            writer.write(
                f"GET /subscribe HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {self.tokens[user]}\r\n\r\n".encode()
            )
            seen = b""
            while b"event: ready" not in seen:
                chunk = await asyncio.wait_for(reader.read(65536), 30)
                if not chunk:
                    return  # refused (shutting down)
                seen += chunk
            self.connections += 1
            if chat is not None:
                await self.chat(user, chat)
            await asyncio.sleep(hold)  # how long this subscriber stays: part of the load
        finally:
            if abort:  # a tab killed: RST instead of FIN
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def chat(self, user: str, text: str) -> None:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"}
        try:
            response = await self.http.post("/chat", json={"message": text}, headers=headers)
        except httpx.HTTPError:
            self.refused += 1
            return
        if response.status_code == 200:
            self.accepted[user].append((text, response.json()["reply"]["text"]))
            self.chats += 1
        else:
            assert response.status_code in (409, 503), response.text
            self.refused += 1

    async def run(self, connections: int, concurrency: int = 100) -> None:
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=self.server.url, timeout=60, limits=limits) as http:
            self.http = http
            gate = asyncio.Semaphore(concurrency)
            busy: set[str] = set()

            async def one(i: int) -> None:
                async with gate:
                    user = self.rng.choice(self.users)
                    text = None
                    if user not in busy and self.rng.random() < 0.3:
                        text = f"{user} churn {i} {self.rng.random():.6f}"
                        busy.add(user)
                    try:
                        await self.subscribe(
                            user, self.rng.random() < 0.3, self.rng.uniform(0, 0.05), text
                        )
                    except (OSError, TimeoutError):
                        self.refused += 1
                    finally:
                        busy.discard(user) if text else None

            await asyncio.gather(*(one(i) for i in range(connections)))


def _quiet(server: Server) -> bool:
    """No connection, no reply in flight, every dialog archived (grace timers done)."""
    health = httpx.get(server.url + "/health").json()
    if health["connections"] or health["replies"]:
        return False
    return not any((server.data / "users").glob("*/dialogs/current.yaml"))


def _now(server: Server) -> tuple[Usage, dict[str, object], list[str]]:
    """What a wait for the baseline reached: usage, /health, the dialogs still open."""
    health = httpx.get(server.url + "/health").json()
    left = [str(p) for p in (server.data / "users").glob("*/dialogs/current.yaml")]
    return Usage.of(server), health, left[:5]


def _settled(server: Server, base: Usage) -> Usage | None:
    if not _quiet(server):
        return None
    now = Usage.of(server)
    if now.tasks > base.tasks or now.fds > base.fds or now.threads > base.threads:
        return None
    return now


def test_connection_churn_returns_memory_descriptors_and_tasks_to_baseline(
    make_server: Make,
) -> None:
    server = make_server(
        disconnect_grace="0.2",
        echo_delay="0",
        rate_limit="0",
        **ONE_ADDRESS_MANY_CLIENTS,
        ping_interval="1",
    )
    users = [f"churn{i}" for i in range(150)]
    churn = Churn(server, users, seed=8)
    asyncio.run(churn.run(300))  # warm up: imports, worker threads, allocator arenas
    wait_for(lambda: _quiet(server), 30, "quiet after the warm-up")
    base = Usage.of(server)
    rounds = 0
    started = time.monotonic()
    minutes = soak(0, 3)  # soak: three minutes of churn, 1,000 connections at a time
    while True:
        asyncio.run(churn.run(1_000))
        rounds += 1
        if time.monotonic() - started > minutes * 60:
            break
    after = wait_for(
        lambda: _settled(server, base), 60, f"back to {base}", show=lambda: _now(server)
    )
    assert after.rss_kb <= base.rss_kb * 1.25 + 16_384, (base, after)
    for user in users:
        check_exactly_once(server.data / "users", user, churn.accepted[user])
    log = server.log()
    assert "Traceback" not in log and "request.failed" not in log
    print(
        f"\nchurn: {churn.connections} connections in {rounds} round(s), {churn.chats} chats, "
        f"{churn.refused} refused; baseline {base}, after {after}"
    )


# --------------------------------------------------------------------------------------
# SIGTERM under load

ABRUPT = (
    "ASGI callable returned without completing response",
    "Exception in ASGI application",
    "Traceback",
    "Task was destroyed",
    "request.failed",
    "was never awaited",
)


@pytest.mark.parametrize("trial", range(soak(1, 10)))
def test_sigterm_during_churn_and_streaming_replies_archives_everything(
    make_server: Make, tmp_path: Path, trial: int
) -> None:
    shutdown_timeout = 5.0
    server = make_server(
        data=tmp_path / f"data-{trial}",
        disconnect_grace="2",
        echo_delay="0.05",
        rate_limit="0",
        **ONE_ADDRESS_MANY_CLIENTS,
        shutdown_timeout=str(shutdown_timeout),
        ping_interval="1",
    )
    talkers = [f"talk{i}" for i in range(20)]
    churn = Churn(server, [f"churn{i}" for i in range(40)], seed=9 + trial)
    churn.accepted |= {u: [] for u in talkers}
    users = [*talkers, *churn.users]
    # Long replies (one word every 50 ms) for 20 users, streaming when SIGTERM lands.
    streams = [SSEClient(server.url, mint(u)) for u in talkers]
    for stream in streams:
        stream.next("ready")
    words = " ".join(f"w{i}" for i in range(60))

    def chatter(user: str) -> None:
        for i in range(1000):
            text = f"{user} long {i} {words}"
            try:
                response = server.chat(user, text)
            except httpx.HTTPError:
                return  # the server went away
            if response.status_code == 200:
                churn.accepted[user].append((text, response.json()["reply"]["text"]))
            elif response.status_code == 503:
                return
            else:
                raise AssertionError(response.text)

    chatters = [threading.Thread(target=chatter, args=(u,)) for u in talkers]
    for thread in chatters:
        thread.start()
    load = threading.Thread(target=lambda: asyncio.run(churn.run(2000, 60)))
    load.start()
    wait_for(lambda: churn.connections >= 300 and churn.chats >= 30, 60, "churn under way")
    wait_for(lambda: httpx.get(server.url + "/health").json()["replies"] >= 10, 20, "replies")
    server.signal(signal.SIGTERM)
    # Exits 0 within ARCHIVER_SHUTDOWN_TIMEOUT (the deadline adds room for the interpreter).
    assert server.wait(shutdown_timeout + 5) == 0
    for thread in [*chatters, load]:
        thread.join(60)
        assert not thread.is_alive()
    for stream in streams:
        assert stream.closed.wait(10)
    users_dir = server.data / "users"
    assert not list(users_dir.glob("*/dialogs/current.yaml")), "every dialog archived"
    interrupted = 0
    for user in users:
        check_exactly_once(users_dir, user, churn.accepted[user])
        interrupted += sum("interrupted: true" in p.read_text() for p in server.archives(user))
    log = server.log()
    for line in ABRUPT:
        assert line not in log, line
    [done] = server.log_lines("shutdown.done")
    assert "timed_out=false" in done
    assert {line.split("reason=")[1].split()[0] for line in server.log_lines("sse.disconnect")} <= {
        "shutdown",
        "client",
    }
    print(
        f"\nSIGTERM under load: {sum(len(a) for a in churn.accepted.values())} chats answered, "
        f"{churn.connections} subscriptions, {interrupted} archives with a stopped reply; {done}"
    )


def test_a_send_timeout_is_logged_with_the_user_it_dropped(make_server: Make) -> None:
    server = make_server(
        send_timeout="1",
        disconnect_grace="0",
        echo_delay="0",
        rate_limit="0",
        **ONE_ADDRESS_MANY_CLIENTS,
    )
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", server.port))
    request = f"GET /subscribe HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {mint('stuck')}\r\n\r\n"
    slow.sendall(request.encode())
    try:
        for i in range(200):
            if server.log_lines("sse.send_timeout"):
                break
            assert server.chat("stuck", f"{i} " + "z" * 60_000).status_code == 200
        [line] = wait_for(lambda: server.log_lines("sse.send_timeout"), 30, "the drop")
        [gone] = wait_for(lambda: server.log_lines("sse.disconnect"), 10, "the disconnect")
        assert "user=stuck" in line, line
        assert "reason=send_timeout" in gone and "user=stuck" in gone, gone
    finally:
        slow.close()
