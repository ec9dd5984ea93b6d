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

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers import Server, mint, run_root, unavailable, wait_for

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
