"""Live-test helpers: a real ``archiver serve`` process, and a real SSE client.

The server runs as a subprocess on a free loopback port with an environment built from
scratch (nothing from the developer's), its log captured to a file the test can grep.
The SSE client reads a raw socket in a thread, so a test can hold several connections,
close one with a real FIN, and wait for events with a deadline instead of sleeping.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pwd
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import httpx
import jwt

SECRET = "test-secret-" + "x" * 32
T = TypeVar("T")
# ARCHIVER_SOAK=1 runs the long versions of the reliability tests (docs/reliability.md).
SOAK = os.environ.get("ARCHIVER_SOAK") == "1"
# Every token the suite minted and every server log it wrote: at the end of the session,
# conftest.py checks that no log holds any of these tokens (or the secret).
MINTED: list[str] = []
LOG_FILES: list[Path] = []


# Load tests run many clients from one loopback address: the per-address limits
# (ARCHIVER_RATE_LIMIT_PER_IP, ARCHIVER_MAX_STREAMS_PER_IP) would take them all for one
# visitor. tests/test_reliability_limits.py tests those limits themselves.
ONE_ADDRESS_MANY_CLIENTS = {"rate_limit_per_ip": "0", "max_streams_per_ip": "0"}

# Read at import: conftest's autouse fixture clears ARCHIVER_* before each test.
REQUIRE_E2E = os.environ.get("ARCHIVER_REQUIRE_E2E") == "1"


def unavailable(reason: str) -> NoReturn:
    """Skip a test this machine cannot run (say why); under ARCHIVER_REQUIRE_E2E=1, fail."""
    import pytest

    if REQUIRE_E2E:
        pytest.fail(reason + "; ARCHIVER_REQUIRE_E2E=1 forbids skipping")
    pytest.skip(reason)


def run_root(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a system tool (mount, ip, chattr); the result says whether it worked."""
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=False)


def soak(default: int, long: int) -> int:
    """``long`` under ARCHIVER_SOAK=1, else ``default`` (trial counts, sizes)."""
    return long if SOAK else default


def remember(token: str) -> str:
    """Record a token made outside :func:`mint`, for the session's log check."""
    MINTED.append(token)
    return token


def _ephemeral_ports() -> range:
    """The kernel's range for outgoing connections' local ports (Linux's default if unread)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


_HANDED_OUT: set[int] = set()
_PORTS = random.Random()


def free_port() -> int:
    """A loopback port nobody listens on now, for a server a test starts.

    Not the kernel's choice (``bind(0)``): that comes from the ephemeral range, where any
    outgoing connection on the machine (a client of another test, a helper's benchmark)
    may take it as its local port before our server binds it ("Address already in use").
    Below that range only listeners bind, and this session never hands a port out twice.
    """
    ephemeral = _ephemeral_ports()
    low, high = 10_000, ephemeral.start - 1
    if high - low < 1_000:  # an unusual range: fall back to the kernel's choice
        low, high = 0, 0
    for _ in range(1_000):
        port = _PORTS.randint(low, high) if high else 0
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = int(sock.getsockname()[1])
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def sign(claims: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256") -> str:
    """Any claims, signed (and remembered for the session's log check)."""
    return remember(jwt.encode(claims, key, algorithm=algorithm))


def mint(
    user: str, *, admin: bool = False, ttl: int = 3600, secret: str = SECRET, **claims: Any
) -> str:
    """A token for ``user``, valid ``ttl`` seconds (negative: expired); extra claims as given."""
    payload: dict[str, Any] = {"sub": user, "exp": int(time.time()) + ttl, **claims}
    if admin:
        payload["role"] = "admin"
    return sign(payload, secret)


def _reached(value: Any) -> str:
    # A log tail or a description reads best as the lines it is; anything else as its repr.
    return f":\n{value}" if isinstance(value, str) and "\n" in value else f" {value!r}"


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 10.0,
    what: str = "condition",
    show: Callable[[], Any] | None = None,
    interval: float = 0.02,
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``.

    The failure says what was reached: ``show()`` when given (the state the predicate
    judged), else the predicate's last value. A deadline, never a fixed sleep, is what
    keeps a test green on a busy machine.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(timeout, what, show() if show is not None else value)
        time.sleep(interval)


async def until(
    predicate: Callable[[], T | None],
    within: float = 5.0,
    what: str = "condition",
    show: Callable[[], Any] | None = None,
    interval: float = 0.002,
) -> T:
    """:func:`wait_for` inside an event loop, ``within`` seconds: polls without blocking the
    loop, for what an in-process test can only observe (files, a fake client's bytes)."""
    import anyio

    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(within, what, show() if show is not None else value)
        await anyio.sleep(interval)


class FakeTimer:
    """One timer of a :class:`FakeClock`."""

    def __init__(self, clock: FakeClock, due: float, callback: Callable[[], None]) -> None:
        self.clock, self.due, self.callback = clock, due, callback

    def cancel(self) -> None:
        if self in self.clock.timers:
            self.clock.timers.remove(self)


class FakeClock:
    """A ``call_later`` for :class:`archiver.presence.Presence` whose timers fire only when
    the test moves time on (``advance``), so a grace passes without waiting for it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[FakeTimer] = []  # pending, soonest not first

    def call_later(self, seconds: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(self, self.now + seconds, callback)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for timer in sorted((t for t in self.timers if t.due <= self.now), key=lambda t: t.due):
            self.timers.remove(timer)
            timer.callback()


def _timed_out(seconds: float, what: str, reached: Any) -> AssertionError:
    """The one failure of :func:`wait_for` and :func:`until`: what was awaited, what was reached."""
    return AssertionError(
        f"timed out after {seconds}s waiting for {what}; reached{_reached(reached)}"
    )


def base_env(home: Path, **archiver: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}
    env.update({f"ARCHIVER_{k.upper()}": str(v) for k, v in archiver.items()})
    return env


def settings_of(env: dict[str, str]) -> dict[str, str]:
    """``{"ARCHIVER_ECHO_DELAY": "0.1"}`` as :class:`Server` settings, ``{"echo_delay": ...}``."""
    return {k.removeprefix("ARCHIVER_").lower(): str(v) for k, v in env.items()}


_LOGFMT_HEAD = re.compile(r"^(\S+)\s+([A-Z]+)\s+(\S+)(.*)$")
_LOGFMT_PAIR = re.compile(r'([A-Za-z_][\w.]*)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_logfmt(path: Path) -> list[dict[str, str]]:
    """A server log as records: ``ts``, ``level``, ``event`` and every ``key=value``."""
    records = []
    for line in path.read_text("utf-8", errors="replace").splitlines():
        head = _LOGFMT_HEAD.match(line)
        if head is None:
            continue
        record = {"ts": head[1], "level": head[2], "event": head[3]}
        for key, value in _LOGFMT_PAIR.findall(head[4]):
            record[key] = json.loads(value) if value.startswith('"') else value
        records.append(record)
    return records


# What a test server runs with unless told otherwise: the test secret, no fsync (tests
# do not measure durability through the page cache), and no sweep within a test.
QUICK = {"jwt_secret": SECRET, "fsync": "no", "sweep_interval": "3600"}


_BARRIERS = itertools.count(1)  # Server.log_barrier's markers, unique in a test run


@dataclass
class Server:
    """One ``archiver serve`` subprocess, on its own port, for its whole life.

    It can be stopped (SIGTERM) or killed and started again on the same port (a page's
    EventSource finds it by itself); several may share one data directory.
    """

    data: Path
    log_path: Path
    settings: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"
    # Name the data directory as the README's quick start does: `--data data`, relative to
    # the server's working directory (its parent), instead of an absolute path.
    relative_data: bool = False
    # Under ``settings``; a test that wants the service's own defaults passes only the secret.
    defaults: dict[str, str] = field(default_factory=lambda: dict(QUICK))

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Server:
        self.spawn()
        self.wait_healthy()
        return self

    def spawn(self) -> Server:
        """Start the process without waiting for it to answer."""
        env = base_env(self.data.parent, **{**self.defaults, **self.settings})
        args = [sys.executable, "-m", "archiver", "serve", "--port", str(self.port)]
        data = self.data.name if self.relative_data else str(self.data)
        args += ["--data", data, "--host", self.host]
        LOG_FILES.append(self.log_path)
        log = open(self.log_path, "ab")  # noqa: SIM115 (owned by the child)
        self.proc = subprocess.Popen(
            args,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=self.data.parent,
            start_new_session=True,  # a ^C to pytest reaches pytest, which stops it
        )
        log.close()
        return self

    def wait_healthy(self, timeout: float = 20) -> None:
        wait_for(
            self._healthy,
            timeout,
            f"server on {self.port} to answer /health",
            show=lambda: self.log().splitlines()[-8:],
        )

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited early ({self.proc.returncode}):\n{self.log()}")
        try:
            return httpx.get(self.url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # The browser tests' name for it; tests written against them still call it.
    logs = log

    def records(self) -> list[dict[str, str]]:
        """The log parsed (:func:`parse_logfmt`)."""
        return parse_logfmt(self.log_path) if self.log_path.exists() else []

    def log_lines(self, event: str, since: int = 0) -> list[str]:
        """The lines of ``event``, from line ``since`` of the log on (see :meth:`log_mark`)."""
        lines = self.log().splitlines()[since:]
        return [line for line in lines if f" {event} " in line + " "]

    def log_mark(self) -> int:
        """How many lines the log has now: pass it as ``since`` to read only what follows."""
        return len(self.log().splitlines())

    def log_barrier(self, timeout: float = 10) -> int:
        """Wait until the log holds every line of the requests answered so far; return the
        mark after them. The server writes its log in order, so once the access line of
        a ``GET /health`` made now is there, every earlier request's lines are too."""
        marker = f"barrier={next(_BARRIERS)}"
        httpx.get(f"{self.url}/health?{marker}", timeout=timeout)
        wait_for(
            lambda: any(marker in line for line in self.log().splitlines()),
            timeout,
            f"the access line of GET /health?{marker}",
        )
        lines = self.log().splitlines()
        return next(i for i in range(len(lines), 0, -1) if marker in lines[i - 1])

    def wait_log(
        self, event: str, count: int = 1, *, since: int = 0, timeout: float = 10
    ) -> list[str]:
        """Wait until the log holds at least ``count`` lines of ``event`` (after ``since``).

        The server writes its log once per event-loop turn, so a line can land after the
        response that caused it: any test that reads what the server logged waits here.
        """
        wait_for(
            lambda: len(self.log_lines(event, since)) >= count,
            timeout,
            f"{count} {event} line(s) in {self.log_path.name}",
            show=lambda: self.log().splitlines()[since:][-8:],
        )
        return self.log_lines(event, since)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit code (None: never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, or a teardown that need not wait for a graceful end."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def headers(self, user: str, **kw: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint(user, **kw)}"}

    def chat(self, user: str, message: str, **kw: Any) -> httpx.Response:
        return httpx.post(
            self.url + "/chat",
            json={"message": message},
            headers=self.headers(user),
            timeout=30,
            **kw,
        )

    def chat_url(self, user: str, **claims: Any) -> str:
        """The demo chat page for ``user``, the token in the fragment (as `serve` prints it)."""
        return f"{self.url}/#token={mint(user, **claims)}"

    def review_url(self, user: str, **claims: Any) -> str:
        return f"{self.url}/review#token={mint(user, **claims)}"

    def user_dir(self, user: str) -> Path:
        from archiver.layout import user_dir_name

        return self.data / "users" / user_dir_name(user) / "dialogs"

    def archives(self, user: str) -> list[Path]:
        """The user's archives, oldest first (``-2`` comes after its plain name)."""
        from archiver.layout import archive_sort_key

        directory = self.user_dir(user) / "archived"
        if not directory.is_dir():
            return []
        return sorted(directory.glob("*.yaml"), key=lambda p: archive_sort_key(p.name))

    def archived(self) -> list[Path]:
        """Every user's archives, by path."""
        return sorted(self.data.glob("users/*/dialogs/archived/*.yaml"))

    def current(self) -> list[Path]:
        """Every user's current dialog, by path."""
        return sorted(self.data.glob("users/*/dialogs/current.yaml"))


# What the client itself records beside the stream's events: comments, `retry:`, and each
# connection's "open" (its status), "eof" and "error".
CLIENT_KINDS = frozenset({"comment", "retry", "open", "eof", "error"})


@dataclass(frozen=True)
class SSEEvent:
    event: str  # an SSE event name, or one of CLIENT_KINDS
    raw: str  # the data lines, joined with "\n" (a comment's text)
    id: str | None
    conn: int = 0  # which connection (0, 1, ...) it arrived on
    at: float = field(default_factory=time.monotonic)

    @property
    def kind(self) -> str:
        return self.event

    @property
    def data(self) -> Any:
        """An event's data as JSON (what the server always sends); a comment's as text."""
        return self.raw if self.event in CLIENT_KINDS else json.loads(self.raw)

    def json(self) -> Any:
        return json.loads(self.raw)


class SSEParser:
    """Incremental text/event-stream parser (the WHATWG rules this client needs)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._reset()

    def _reset(self) -> None:
        self._event: str = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, chunk: bytes) -> Iterator[tuple[str, str, str | None]]:
        self._buffer += chunk
        while (end := self._buffer.find(b"\n")) >= 0:
            line = self._buffer[:end].rstrip(b"\r").decode("utf-8")
            self._buffer = self._buffer[end + 1 :]
            if not line:
                if self._data or self._event:
                    yield self._event or "message", "\n".join(self._data), self._id
                self._reset()
            elif line.startswith(":"):
                yield "comment", line[1:].strip(), None
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    self._event = value
                elif name == "data":
                    self._data.append(value)
                elif name == "id":
                    self._id = value
                elif name == "retry":
                    yield "retry", value, None


class SSEClient:
    """A raw-socket SSE subscriber, reading in a thread from the moment it is made.

    HTTP/1.1 with chunked decoding, the token as a Bearer header, ``?access_token=`` or the
    cookie (``via``). Events are in ``seen`` (and ``next()`` waits for one), comments in
    ``comments``; ``snapshot()`` has everything, the client's own records too. By default
    it connects once, at once (a refused connection raises here); ``reconnect=True`` makes
    it a browser-like EventSource that reconnects with Last-Event-ID after
    ``reconnect_delay`` (0.1 s rather than a browser's 3 s: faster reconnects make the
    races harder, not easier). ``close()`` goes away like a closed tab: a FIN at once.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        last_event_id: str | None = None,
        path: str = "/subscribe",
        *,
        via: str = "bearer",
        reconnect: bool = False,
        reconnect_delay: float = 0.1,
        max_connects: int = 20,
        read_timeout: float = 30.0,
    ) -> None:
        assert via in {"query", "cookie", "bearer"}
        host, port = base_url.removeprefix("http://").rsplit(":", 1)
        self.host, self.port, self.path, self.token, self.via = host, int(port), path, token, via
        self.reconnect, self.reconnect_delay = reconnect, reconnect_delay
        self.max_connects, self.read_timeout = max_connects, read_timeout
        self.last_event_id = last_event_id
        self.heads: list[tuple[int, dict[str, str]]] = []
        self.status: int | None = None  # the latest connection's
        self.comments: list[str] = []
        self.seen: list[SSEEvent] = []
        self.closed = threading.Event()  # the reader is done: the stream ended or was closed
        self._all: list[SSEEvent] = []
        self._queue: queue.Queue[SSEEvent] = queue.Queue()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        first = None if reconnect else self._connect(timeout=read_timeout)
        self._thread = threading.Thread(target=self._run, args=(first,), daemon=True)
        self._thread.start()

    # -- reading what arrived

    def next(self, name: str | None = None, timeout: float = 10) -> SSEEvent:
        """The next event (named ``name`` if given, skipping others)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {name or 'event'} within {timeout}s; saw {self.seen}")
            try:
                event = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if name is None or event.event == name:
                return event

    def snapshot(self) -> list[SSEEvent]:
        with self._lock:
            return list(self._all)

    def find(self, kind: str, pred: Callable[[SSEEvent], bool] = lambda e: True) -> list[SSEEvent]:
        return [e for e in self.snapshot() if e.kind == kind and pred(e)]

    def ids(self, kind: str = "message") -> set[str | None]:
        return {e.id for e in self.find(kind)}

    def describe(self) -> str:
        return "SSE events:\n" + "\n".join(
            f"  conn={e.conn} {e.kind} id={e.id} {e.raw[:120]}" for e in self.snapshot()[-30:]
        )

    def close(self) -> None:
        """Close like a browser tab: FIN now, even while the reader thread is blocked."""
        self._stop.set()
        with self._lock:
            sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "SSE client thread did not stop"

    def __enter__(self) -> SSEClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the connection

    def _record(self, kind: str, data: str, event_id: str | None, conn: int) -> None:
        event = SSEEvent(kind, data, event_id, conn)
        with self._lock:
            self._all.append(event)
            if kind == "comment":
                self.comments.append(data)
            elif kind not in CLIENT_KINDS:
                self.seen.append(event)
                if event_id is not None:
                    self.last_event_id = event_id
        if kind not in CLIENT_KINDS:
            self._queue.put(event)

    def _connect(self, timeout: float) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.settimeout(self.read_timeout)
        with self._lock:
            self._sock = sock
        return sock

    def _request(self) -> bytes:
        path, headers = self.path, {"Host": f"{self.host}:{self.port}"}
        headers |= {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        headers["User-Agent"] = "e2e-eventsource"
        if self.via == "query":
            path += ("&" if "?" in path else "?") + f"access_token={self.token}"
        elif self.via == "cookie":
            headers["Cookie"] = f"archiver_token={self.token}"
        else:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _run(self, first: socket.socket | None) -> None:
        try:
            for conn in range(self.max_connects):
                if self._stop.is_set():
                    return
                try:
                    self._stream(conn, first or self._connect(timeout=5))
                except OSError as exc:
                    if self._stop.is_set():
                        return
                    self._record("error", repr(exc), None, conn)
                first = None
                if not self.reconnect or self._stop.wait(self.reconnect_delay):
                    return
        finally:
            self.closed.set()

    def _stream(self, conn: int, sock: socket.socket) -> None:
        try:
            if self._stop.is_set():
                return
            sock.sendall(self._request())
            reader = sock.makefile("rb")
            status, headers = self._read_head(reader)
            with self._lock:
                self.heads.append((status, headers))
                self.status = status
            self._record("open", str(status), None, conn)
            if status != 200:
                self._record("error", f"HTTP {status}", None, conn)
                return
            chunked = "chunked" in headers.get("transfer-encoding", "")
            parser = SSEParser()
            for chunk in self._body(reader, chunked):
                for kind, data, event_id in parser.feed(chunk):
                    self._record(kind, data, event_id, conn)
            self._record("eof", "", None, conn)
        finally:
            with self._lock:
                self._sock = None
            sock.close()

    @staticmethod
    def _read_head(reader: Any) -> tuple[int, dict[str, str]]:
        status_line = reader.readline(65536).decode("latin-1")
        if not status_line:
            raise ConnectionResetError("closed before the status line")
        status, headers = int(status_line.split()[1]), {}
        for _ in range(100):
            line = reader.readline(65536).decode("latin-1").strip()
            if not line:
                break
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    @staticmethod
    def _body(reader: Any, chunked: bool) -> Iterator[bytes]:
        while True:
            if not chunked:
                data = reader.read1(65536)
                if not data:
                    return
                yield data
                continue
            size_line = reader.readline(1024)
            if not size_line.strip():
                return  # EOF (or a stray CRLF at EOF)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                return
            data = reader.read(size)
            reader.read(2)
            if len(data) < size:
                return
            yield data


class RedisServer:
    """A real ``redis-server`` on a free loopback port, in its own directory, with no
    persistence: ``restart()`` brings it back empty, as a Redis restarted without its
    data would. Skips (fails under ARCHIVER_REQUIRE_E2E=1) when Debian's package is
    missing."""

    def __init__(self, directory: Path, password: str | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.password = password  # --requirepass: the URL then carries it
        # Also on a unix socket: in /tmp, as a socket path may not exceed 107 bytes.
        self.socket = Path("/tmp") / f"archiver-test-redis-{self.port}.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.socket}?db=0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            unavailable("redis-server is not installed (apt-get install redis-server)")
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                *(["--requirepass", self.password] if self.password else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self.ping, timeout=20, what=f"redis-server on port {self.port}")
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                answer = sock.recv(64)
                # With a password, an unauthenticated PING is refused: it still answers.
                return answer.startswith(b"+PONG") or b"NOAUTH" in answer
        except OSError:
            return False

    def stop(self) -> None:
        """Stop it (SIGKILL: nothing is saved), and wait until the port is closed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=20)
        self.proc = None
        self.socket.unlink(missing_ok=True)  # a killed redis-server leaves it behind

    def restart(self) -> RedisServer:
        """Stop it and start it again on the same port, empty."""
        self.stop()
        return self.start()


# --------------------------------------------------------------------------------------
# nginx: a shipped config (deploy/nginx*.conf) with only its ports and paths changed

LOOPBACK = "127.0.0.1"


def ipv6_loopback_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        unavailable("nginx is not installed (apt-get install nginx)")
    return found


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text("utf-8", errors="replace")
    except FileNotFoundError:
        return f"--- {path.name}: (missing)"
    return f"--- {path.name} (last {lines} lines):\n" + "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------------------
# The config: ports and paths filled in, nothing else

DIRECTIVE = re.compile(r"^(\s*)(\w+)(\s+)([^\s;]+)(.*)$")
PATH_DIRECTIVES = {"pid", "error_log", "access_log"}
TEMP_PATH = re.compile(r"^\w+_temp_path$")
TLS_COMMENTED = re.compile(r"^(\s*)#(\S.*|\s{4}.*|)$")  # "#server {", "#    listen", "#"
ALLOWED_CHANGES = {"listen", "server", "user", "pid", "error_log", "access_log"}
ALLOWED_CHANGES |= {"ssl_certificate", "ssl_certificate_key"}


@dataclass(frozen=True)
class Layout:
    """Where a rendered config puts things."""

    prefix: Path
    http_port: int
    upstream_ports: tuple[int, ...]
    tls_port: int | None = None
    cert: Path | None = None
    key: Path | None = None

    @property
    def access_log(self) -> Path:
        return self.prefix / "access.log"

    @property
    def error_log(self) -> Path:
        return self.prefix / "error.log"


def render_conf(text: str, layout: Layout) -> str:
    """The shipped config with only ports and paths changed; the line count is kept."""
    ipv6 = ipv6_loopback_works()
    ports = iter(layout.upstream_ports)
    upstream_servers = 0
    block: str | None = None
    out: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# BEGIN TLS"):
            block = "tls"
        elif stripped.startswith("# END TLS"):
            block = None
        elif block == "tls" and layout.tls_port is not None:
            line = TLS_COMMENTED.sub(r"\1\2", line)
        if stripped.startswith("upstream archiver"):
            block = "upstream"
        elif block == "upstream" and stripped == "}":
            block = None
        match = DIRECTIVE.match(line)
        if match is None or line.lstrip().startswith("#"):
            out.append(line)
            continue
        indent, name, space, arg, rest = match.groups()
        if name == "listen":
            port = layout.tls_port if arg.endswith(":443") or arg == "443" else layout.http_port
            if arg.startswith("[") and not ipv6:
                line = f"{indent}# (no IPv6 loopback here) {stripped}"
            else:
                host = "[::1]" if arg.startswith("[") else LOOPBACK
                line = f"{indent}listen{space}{host}:{port}{rest}"
        elif name == "server" and block == "upstream":
            upstream_servers += 1
            line = f"{indent}server{space}{LOOPBACK}:{next(ports)}{rest}"
        elif name == "user":
            if os.geteuid() == 0:  # workers must reach the (0700) pytest temp dirs
                line = f"{indent}user{space}{pwd.getpwuid(os.geteuid()).pw_name};"
        elif name in PATH_DIRECTIVES:
            line = f"{indent}{name}{space}{layout.prefix / (name.replace('_', '.'))}{rest}"
        elif TEMP_PATH.match(name):
            line = f"{indent}{name}{space}{layout.prefix / 'temp' / name}{rest}"
        elif name == "ssl_certificate":
            line = f"{indent}{name}{space}{layout.cert};"
        elif name == "ssl_certificate_key":
            line = f"{indent}{name}{space}{layout.key};"
        out.append(line)
    assert upstream_servers == len(layout.upstream_ports), (
        f"deploy/nginx.conf has {upstream_servers} upstream servers; "
        f"the tests run {len(layout.upstream_ports)} instances"
    )
    return "\n".join(out) + "\n"
