"""Servers and a load client for the live benchmarks, each in its own process on loopback.

* :func:`start_archiver` runs ``python -m archiver serve`` on a fresh data directory;
  :func:`start_floor` runs one of :mod:`bench.floors` under the same uvicorn settings
  (uvloop, httptools). Both get a raised ``RLIMIT_NOFILE``.
* :func:`run_client` runs :mod:`bench.load` as a separate process (so the server's CPU
  and memory are its own) and returns the JSON it prints; the benchmark may talk to it
  line by line while it runs (the drain benchmark sends SIGTERM in between).

Every server and client is bounded in time: a client gives up after its deadline and a
server that does not stop on SIGTERM is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

SECRET = "bench-secret-" + "x" * 32
NOFILE = 200_000
# Log lines that mean a stream was cut instead of ended (uvicorn's and asyncio's words).
ABRUPT = re.compile(
    r"ASGI callable returned without completing response|Cancel \d+ running task|Traceback"
)


def raise_nofile() -> None:
    """Let this process hold tens of thousands of sockets (we run as root on the bench box)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Proc:
    """One server process."""

    name: str
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes]
    data: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    gc_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kb(self) -> int:
        return rss_kb(self.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def gc_pauses(self, since: float = 0.0, until: float = float("inf")) -> dict[str, Any]:
        from bench import gcwatch

        assert self.gc_path is not None
        return gcwatch.pauses(str(self.gc_path), since, until)

    def cpu_seconds(self) -> float:
        """The server's CPU time so far, every thread (user + system)."""
        with open(f"/proc/{self.pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def preempted(self) -> int:
        """How often the kernel took a core from the server's loop thread (it had work)."""
        return status_field(self.pid, "nonvoluntary_ctxt_switches")

    def abrupt_lines(self) -> int:
        return len(ABRUPT.findall(self.log()))

    def stop(self, timeout: float = 30) -> float:
        """SIGTERM; return seconds until the process exited (killed after ``timeout``)."""
        if self.proc.poll() is not None:
            return 0.0
        started = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        return time.perf_counter() - started


def rss_kb(pid: int) -> int:
    return status_field(pid, "VmRSS")


def status_field(pid: int, name: str) -> int:
    """A number from ``/proc/<pid>/status`` (``VmRSS`` in KB, a counter...)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {name} for {pid}")


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen backlog was full
    (``TcpExt: ListenOverflows``, this network namespace: every process's listeners)."""
    with open("/proc/net/netstat") as fh:
        lines = fh.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            row = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(row.get("ListenOverflows", 0))
    return 0


def _env(**extra: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    env["HOME"] = os.environ.get("HOME", "/tmp")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    env.update(extra)
    return env


def _spawn(
    args: list[str], env: dict[str, str], log_path: Path, cwd: Path
) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            args, env=env, stdout=log, stderr=log, cwd=cwd, preexec_fn=raise_nofile
        )


def _wait_healthy(proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log_path.read_text(errors='replace')}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server on {port} did not answer /health within 30 s")


def _python(gc_path: Path) -> list[str]:
    """``python -m`` through bench.gcwatch, which records the server's GC pauses."""
    return [sys.executable, "-m", "bench.gcwatch", str(gc_path)]


def start_archiver(
    root: Path, name: str = "archiver", data: Path | None = None, **settings: str
) -> Proc:
    """``python -m archiver serve`` on a fresh data directory under ``root`` (or on
    ``data``, which several instances may share)."""
    port = free_port()
    data = data or root / f"{name}-data"
    # The load comes from one loopback address: per-address limits off (a deployment has
    # as many addresses as visitors).
    defaults = {
        "jwt_secret": SECRET,
        "sweep_interval": "3600",
        "rate_limit_per_ip": "0",
        "max_streams_per_ip": "0",
    }
    env = _env(**{f"ARCHIVER_{k.upper()}": str(v) for k, v in {**defaults, **settings}.items()})
    log_path = root / f"{name}.log"
    gc_path = root / f"{name}.gc.json"
    args = [*_python(gc_path), "archiver", "serve", "--port", str(port), "--data", str(data)]
    proc = _spawn(args, env, log_path, root)
    _wait_healthy(proc, port, log_path)
    return Proc(name, port, log_path, proc, data, env, gc_path)


def start_floor(root: Path, kind: str, **settings: str) -> Proc:
    """One of :mod:`bench.floors` (``sse``, ``asgi``, ``json``) under uvicorn."""
    port = free_port()
    data = root / f"floor-{kind}-data"
    data.mkdir(parents=True, exist_ok=True)
    env = _env(**{f"FLOOR_{k.upper()}": str(v) for k, v in settings.items()})
    log_path = root / f"floor-{kind}.log"
    gc_path = root / f"floor-{kind}.gc.json"
    args = [*_python(gc_path), "bench.floors", kind, "--port", str(port), "--data", str(data)]
    proc = _spawn(args, env, log_path, root)
    _wait_healthy(proc, port, log_path)
    return Proc(f"floor-{kind}", port, log_path, proc, data, env, gc_path)


@contextlib.contextmanager
def running(proc: Proc) -> Iterator[Proc]:
    try:
        yield proc
    finally:
        proc.stop()


class Client:
    """A :mod:`bench.load` process: one scenario, JSON lines out, commands in."""

    def __init__(
        self, scenario: str, config: dict[str, Any], timeout: float, module: str = "bench.load"
    ) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, scenario, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,  # unbuffered, so select() sees every line the client printed
            env=_env(),
            preexec_fn=raise_nofile,
        )

    def read(self) -> dict[str, Any]:
        """The next JSON line the client prints (its phases and its result)."""
        assert self.proc.stdout is not None
        line = _readline(self.proc.stdout, self.deadline - time.monotonic())
        if not line:
            self.proc.wait(10)
            raise RuntimeError(f"load client exited ({self.proc.returncode}) without a result")
        result: dict[str, Any] = json.loads(line)
        if "error" in result:
            raise RuntimeError(f"load client: {result['error']}")
        return result

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.wait(max(1.0, self.deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _readline(stream: IO[bytes], timeout: float) -> bytes:
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(max(0.0, timeout)):
            raise RuntimeError(f"load client: no answer within {timeout:.0f} s")
    return stream.readline()


def run_client(
    scenario: str, config: dict[str, Any], timeout: float, module: str = "bench.load"
) -> dict[str, Any]:
    """Run one client scenario (of ``module``) to its end and return its final JSON line."""
    client = Client(scenario, config, timeout, module)
    try:
        while True:
            result = client.read()
            if result.get("done"):
                return result
    finally:
        client.close()
