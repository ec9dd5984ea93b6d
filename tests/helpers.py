"""Live-test helpers: a real ``archiver serve`` process, and a real SSE client.

The server runs as a subprocess on a free loopback port with an environment built from
scratch (nothing from the developer's), its log captured to a file the test can grep.
The SSE client reads a raw socket in a thread, so a test can hold several connections,
close one with a real FIN, and wait for events with a deadline instead of sleeping.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import httpx
import jwt

SECRET = "test-secret-" + "x" * 32
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mint(user: str, *, admin: bool = False, ttl: int = 3600, secret: str = SECRET) -> str:
    claims: dict[str, Any] = {"sub": user, "exp": int(time.time()) + ttl}
    if admin:
        claims["role"] = "admin"
    return remember(jwt.encode(claims, secret, algorithm="HS256"))


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    what: str = "condition",
    show: Callable[[], Any] | None = None,
) -> Any:
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
            reached = show() if show is not None else value
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}; reached {reached!r}"
            )
        time.sleep(0.02)


def base_env(home: Path, **archiver: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}
    env.update({f"ARCHIVER_{k.upper()}": str(v) for k, v in archiver.items()})
    return env


@dataclass
class Server:
    """One ``archiver serve`` subprocess."""

    data: Path
    log_path: Path
    settings: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"
    # Name the data directory as the README's quick start does: `--data data`, relative to
    # the server's working directory (its parent), instead of an absolute path.
    relative_data: bool = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Server:
        self.spawn()
        wait_for(self._healthy, 20, f"server on {self.port} to answer /health")
        return self

    def spawn(self) -> Server:
        """Start the process without waiting for it to answer."""
        defaults = {"jwt_secret": SECRET, "fsync": "no", "sweep_interval": "3600"}
        env = base_env(self.data.parent, **{**defaults, **self.settings})
        args = [sys.executable, "-m", "archiver", "serve", "--port", str(self.port)]
        data = self.data.name if self.relative_data else str(self.data)
        args += ["--data", data, "--host", self.host]
        LOG_FILES.append(self.log_path)
        log = open(self.log_path, "ab")  # noqa: SIM115 (owned by the child)
        self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=log, cwd=self.data.parent)
        log.close()
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited early:\n{self.log()}")
        try:
            return httpx.get(self.url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_lines(self, event: str, since: int = 0) -> list[str]:
        """The lines of ``event``, from line ``since`` of the log on (see :meth:`log_mark`)."""
        lines = self.log().splitlines()[since:]
        return [line for line in lines if f" {event} " in line + " "]

    def log_mark(self) -> int:
        """How many lines the log has now: pass it as ``since`` to read only what follows."""
        return len(self.log().splitlines())

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

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
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


@dataclass
class SSEEvent:
    event: str
    data: Any
    id: str | None


class SSEClient:
    """A raw-socket SSE subscriber; events land in a queue, comments in ``comments``."""

    def __init__(
        self, base_url: str, token: str, last_event_id: str | None = None, path: str = "/subscribe"
    ) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        headers = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream"]
        headers.append(f"Authorization: Bearer {token}")
        if last_event_id:
            headers.append(f"Last-Event-ID: {last_event_id}")
        self.sock.sendall(("\r\n".join(headers) + "\r\n\r\n").encode())
        self.events: queue.Queue[SSEEvent] = queue.Queue()
        self.comments: list[str] = []
        self.status: int | None = None
        self.closed = threading.Event()
        self.seen: list[SSEEvent] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buf = b""
        try:
            while b"\r\n\r\n" not in buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return
                buf += chunk
            head, buf = buf.split(b"\r\n\r\n", 1)
            self.status = int(head.split()[1])
            chunked = b"chunked" in head.lower()
            text = ""
            for piece in self._body(buf, chunked):
                text += piece.decode()
                while "\n\n" in text:
                    block, text = text.split("\n\n", 1)
                    self._parse(block)
        except OSError:
            pass
        finally:
            self.closed.set()

    def _body(self, buf: bytes, chunked: bool):  # type: ignore[no-untyped-def]
        while True:
            if not chunked:
                if buf:
                    yield buf
                buf = self.sock.recv(65536)
                if not buf:
                    return
                continue
            while b"\r\n" not in buf:
                more = self.sock.recv(65536)
                if not more:
                    return
                buf += more
            size_line, buf = buf.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                return
            while len(buf) < size + 2:
                more = self.sock.recv(65536)
                if not more:
                    return
                buf += more
            yield buf[:size]
            buf = buf[size + 2 :]

    def _parse(self, block: str) -> None:
        event, data, ident = "message", [], None
        for line in block.split("\n"):
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
            elif line.startswith("id:"):
                ident = line[3:].strip()
        if data:
            parsed = SSEEvent(event, json.loads("\n".join(data)), ident)
            self.seen.append(parsed)
            self.events.put(parsed)

    def next(self, name: str | None = None, timeout: float = 10) -> SSEEvent:
        """The next event (named ``name`` if given, skipping others)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {name or 'event'} within {timeout}s; saw {self.seen}")
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if name is None or event.event == name:
                return event

    def close(self) -> None:
        """Close like a browser tab: FIN now, even while the reader thread is blocked."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.closed.wait(5)

    def __enter__(self) -> SSEClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
