"""What the benchmarks of several instances share: a redis-server of their own, and
archiver instances on one data directory and one broker (``ARCHIVER_BROKER``).

:func:`start_redis` runs Debian's ``redis-server`` on a free loopback port with no
persistence, in the benchmark's temporary directory; :func:`cannot_run` says why a
benchmark cannot run (``python -m bench all`` prints the reason in place of its table).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from bench.live import Proc, free_port, start_archiver

REDIS = "redis-server"


def load_average() -> float:
    """The machine's 1-minute load average: printed beside figures taken on a shared box."""
    return os.getloadavg()[0]


def missing_redis() -> str | None:
    if shutil.which(REDIS) is None and not Path("/usr/bin/redis-server").exists():
        return "redis-server is not installed (apt-get install redis-server)"
    return None


def cannot_run(out: Callable[[str], None]) -> bool:
    """Whether this machine lacks what a broker benchmark needs; if so, say why in ``out``."""
    reason = missing_redis()
    if reason is not None:
        out(f"(not run: {reason})")
    return reason is not None


def start_redis(root: Path) -> Proc:
    port = free_port()
    directory = root / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / "redis.log"
    binary = shutil.which(REDIS) or "/usr/bin/redis-server"
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    args += ["--save", "", "--appendonly", "no"]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not _pong(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"redis-server did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    return Proc("redis", port, log_path, proc, directory)


def redis_url(redis: Proc) -> str:
    return f"redis://127.0.0.1:{redis.port}/0"


def redis_used_memory(redis: Proc) -> int:
    """redis-server's ``used_memory``, bytes."""
    import redis as redis_py

    client = redis_py.Redis(host="127.0.0.1", port=redis.port)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_instance(root: Path, name: str, redis: Proc, data: Path, **settings: str) -> Proc:
    """An archiver instance on the shared ``data`` directory, with the Redis broker."""
    return start_archiver(root, name, data=data, broker=redis_url(redis), **settings)
