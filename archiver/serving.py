"""How ``archiver serve`` runs uvicorn: one process, or N workers on one port.

One process (the default) is uvicorn's ``Server`` on a listener we bind ourselves. With
``--workers N`` (``ARCHIVER_WORKERS``) uvicorn's own supervisor
(``uvicorn.supervisors.Multiprocess``) starts N spawned workers, each serving one
listener the parent bound: N sockets on the one port with ``SO_REUSEPORT``, worker k
always on socket k (its replacement too), so the kernel spreads new connections evenly
over the N event loops and N cores. Each worker is a whole instance (its own instance
id, journal threads, index thread and graceful drain, its ``worker=`` field on every log
line); they share only the data directory and the broker, which is why workers are
refused with the memory broker (it lives in one process: a reply would reach only the
streams of the worker that took the chat).

The parent serves nothing and holds nothing of a user's. On SIGTERM or SIGINT it passes
SIGTERM to every worker and waits: each drains as a single process does (every stream
told, every dialog it holds archived) and the parent exits 0 if every worker did. A
worker that dies is logged once (``worker.died``) and replaced, as uvicorn's supervisor
does; the parent keeps its socket open meanwhile, so connections the kernel hands it wait
in its backlog for the replacement instead of being refused. One that fails to start
(``STARTUP_FAILURE``: a bad setting, Redis unreachable) stops them all, since its
replacement would fail the same way.

Why uvicorn's supervisor and not our own ``fork``: it already passes bound sockets to
spawned (not forked) children, pings each worker to find a hung one, and knows uvicorn's
start-up failure code; a fork after the parent imported the app would share
half-initialized state (uvloop, threads) with every child. Why one socket per worker and
not one shared by all: uvloop accepts every pending connection at once, so on one shared
socket whichever worker wakes first takes a whole burst (48 of 50 streams opened at once
went to one of two workers, docs/performance.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from . import logs
from .config import Settings, redacted_url
from .logs import log

# Seconds a worker may leave the supervisor's ping unanswered before it is taken for hung
# and replaced. uvicorn's default (5 s) is shorter than a spawned worker's start-up on a
# loaded machine (a fresh interpreter importing the app), which would be killed as hung.
HEALTHCHECK_TIMEOUT = 30
_PR_SET_PDEATHSIG = 1  # prctl(2)


def refusal(settings: Settings) -> str | None:
    """Why these settings cannot run several workers (None: they can)."""
    if settings.workers > 1 and settings.broker == "memory":
        return (
            f"--workers {settings.workers} needs a shared broker: set ARCHIVER_BROKER to a "
            "Redis URL (the memory broker lives in one process)"
        )
    return None


# The GIL's switch interval of a server process (CPython's default: 5 ms). A journal
# worker thread gives the GIL up in every system call (~12 for one archive) and, while
# the loop is busy (10,000 streams ending, 200 disconnects), waited up to the interval
# to get it back each time: 10,000 shutdown trailers took 3-5 s beside the streams' ends.
SWITCH_INTERVAL = 0.0005


class Server(uvicorn.Server):
    # Divergence #5: a uvicorn internal, Server._captured_signals, is cleared so that a
    # graceful SIGTERM exits 0.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            # A graceful shutdown after SIGTERM is a clean exit: exit 0 instead of
            # uvicorn's re-raising the signal, which supervisors would read as "killed".
            self._captured_signals.clear()

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        # Process-wide, so set where the server process starts rather than in the pool
        # that needs it: a library (the tests, the CLI) building a pool keeps its own.
        sys.setswitchinterval(SWITCH_INTERVAL)
        super().run(sockets)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's settings for ``archiver serve`` (the app and the protocol aside)."""
    return {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": settings.access_log,
        "timeout_graceful_shutdown": settings.shutdown_timeout,
        "proxy_headers": True,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
        "lifespan": "on",
        # uvloop and httptools come with uvicorn[standard] (a dependency); name them so a
        # missing one shows up as an error here, not as a server that is quietly slower.
        "loop": "uvloop" if sys.platform != "win32" else "asyncio",
        "http": "httptools",
    }


def serve(settings: Settings) -> None:
    """Serve until a signal: one process, or ``settings.workers`` workers. Exits (the
    process) with 0 after a graceful shutdown, non-zero if a worker failed."""
    from .httpproto import JsonErrorsProtocol

    options = uvicorn_options(settings)
    # Divergence #11: uvicorn's httptools protocol, subclassed so that a request it cannot
    # parse (a 1 MB token in the query) is answered in JSON like every other error.
    options["http"] = JsonErrorsProtocol
    if settings.workers == 1:
        from .app import create_app

        config = uvicorn.Config(create_app(settings), **options)
        Server(config).run(sockets=[listen(config, settings)])
        return
    # Each worker builds its own app (Worker.target): the parent never imports it.
    config = uvicorn.Config(
        "archiver.app:from_env",
        workers=settings.workers,
        timeout_worker_healthcheck=HEALTHCHECK_TIMEOUT,
        **options,
    )
    workers = Workers(config, listeners(config, settings), settings)
    workers.run()
    sys.exit(workers.exit_code())


def listen(config: uvicorn.Config, settings: Settings) -> socket.socket:
    """The listening socket, bound and listening before the app starts."""
    # Our own listening socket, so accepted connections inherit keepalive and a user
    # timeout (Linux copies them from the listener): a vanished peer cannot hold a stream.
    # Divergence #6: uvicorn internals Config.bind_socket() and Config.backlog, to set
    # socket options on the listener and listen before start-up.
    sock = config.bind_socket()
    bound_dead_peers(sock, settings.tcp_user_timeout)
    # bind_socket() already printed "Uvicorn running on ...": listen now, so a connection
    # made on reading it waits in the backlog for start-up instead of being refused.
    sock.listen(config.backlog)
    return sock


def listeners(config: uvicorn.Config, settings: Settings) -> list[socket.socket]:
    """One listening socket per worker, all on the one port (``SO_REUSEPORT``)."""
    # uvicorn's own bind first: a port already taken fails here, as it does for one
    # process (SO_REUSEPORT alone would let us join another server's group on it).
    config.bind_socket().close()
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    out = []
    for _ in range(settings.workers):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((settings.host, settings.port))
        bound_dead_peers(sock, settings.tcp_user_timeout)
        sock.listen(config.backlog)
        out.append(sock)
    return out


def bound_dead_peers(sock: socket.socket, user_timeout: float) -> None:
    """Drop a peer that stops acknowledging for ``user_timeout`` seconds.

    TCP_USER_TIMEOUT aborts a connection whose sent data (a ping, an event) stays
    unacknowledged that long; keepalive probes, from half of it on, cover a connection
    with nothing to send. Without them a peer that vanished without FIN/RST (a laptop
    that sleeps, a dropped route) holds its stream until TCP gives up: ~15 minutes.
    """
    if user_timeout <= 0:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", max(1, round(user_timeout / 2))),
        ("TCP_KEEPINTVL", max(1, round(user_timeout / 6))),
        ("TCP_KEEPCNT", 3),
        ("TCP_USER_TIMEOUT", max(1, round(user_timeout * 1000))),
    ):
        option = getattr(socket, name, None)
        if option is not None:  # Linux has them all; other systems some
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


# Divergence #14: uvicorn's Multiprocess and Process subclassed, and one SO_REUSEPORT
# socket per worker instead of its one shared socket.
class Worker(Process):
    """One worker: uvicorn's supervised process, running our app and our ``Server``.

    Pickled into the spawned child with the settings (the parent's, already resolved:
    the same secret, the same data directory) and its number, 1 to N; a replacement
    keeps the number of the worker it replaces.
    """

    def __init__(
        self, config: uvicorn.Config, sockets: list[socket.socket], settings: Settings, number: int
    ) -> None:
        self.settings = settings
        self.number = number
        super().__init__(config, sockets)

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = Server(config=self.config)
        return self._server

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # pragma: no cover
        # In the child. A parent that is SIGKILLed cannot pass SIGTERM on: the kernel does,
        # so no worker is left serving (and holding dialogs) without its supervisor.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        logs.setup(self.settings)
        logs.tag(worker=self.number)
        from .app import create_app

        try:
            self.config.app = create_app(self.settings)
        except Exception as exc:  # the same failure awaits every worker: stop them all
            # Said as uvicorn says a failed start-up; the parent's worker.died follows.
            logging.getLogger("uvicorn.error").error("Application could not be built: %s", exc)
            sys.exit(STARTUP_FAILURE)
        super().target(sockets)


class Workers(Multiprocess):
    """uvicorn's supervisor, with our workers, our log lines and an exit code."""

    def __init__(
        self, config: uvicorn.Config, sockets: list[socket.socket], settings: Settings
    ) -> None:
        super().__init__(config, sockets)
        self.settings = settings
        self.failed_start = False
        self.exit_codes: list[int | None] = []

    def spawn(self, number: int) -> Worker:
        # Worker k serves socket k, and so does its replacement.
        worker = Worker(self.config, [self.sockets[number - 1]], self.settings, number)
        worker.start()
        return worker

    def init_processes(self) -> None:
        log.info(
            "workers.start",
            workers=self.processes_num,
            pid=os.getpid(),
            host=self.settings.host,
            port=self.settings.port,
            broker=redacted_url(self.settings.broker),
        )
        self.processes = [self.spawn(n) for n in range(1, self.processes_num + 1)]

    def keep_subprocess_alive(self) -> None:
        # uvicorn's, with one log line of ours per death and our Worker as the replacement.
        for index, worker in enumerate(self.processes):
            if self.should_exit.is_set():
                return  # exiting: every worker is being stopped anyway
            if worker.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            worker.kill()  # a worker that answers no ping is hung
            worker.join()
            assert isinstance(worker, Worker)
            started = worker.exitcode != STARTUP_FAILURE
            log.error(
                "worker.died",
                worker=worker.number,
                pid=worker.pid,
                exit=_exit_name(worker.exitcode),
                restart=started,
            )
            if not started:
                # The app, a setting or the broker is broken: every replacement would fail.
                self.failed_start = True
                self.should_exit.set()
                return
            self.processes[index] = self.spawn(worker.number)

    def terminate_all(self) -> None:
        # The parent's copies of the listeners first: once each worker closes its own at
        # the start of its drain, the port refuses new connections (nginx tries another
        # upstream at once) instead of queueing them for workers that will never accept.
        for sock in self.sockets:
            sock.close()
        super().terminate_all()

    def join_all(self) -> None:
        super().join_all()
        self.exit_codes = [worker.exitcode for worker in self.processes]
        log.info(
            "workers.stop",
            pid=os.getpid(),
            exits=",".join(_exit_name(code) for code in self.exit_codes),
        )

    # uvicorn's SIGHUP (restart all), SIGTTIN and SIGTTOU (one more, one fewer) would start
    # plain uvicorn workers without our app; the number of workers is a setting here. Said
    # as uvicorn says it received a signal.
    def handle_hup(self) -> None:
        _ignored("SIGHUP")

    def handle_ttin(self) -> None:
        _ignored("SIGTTIN")

    def handle_ttou(self) -> None:
        _ignored("SIGTTOU")

    def exit_code(self) -> int:
        """0 when every worker shut down cleanly; STARTUP_FAILURE if one could not start."""
        if self.failed_start:
            return STARTUP_FAILURE
        return 0 if all(code == 0 for code in self.exit_codes) else 1


def _ignored(name: str) -> None:
    logging.getLogger("uvicorn.error").info(
        "Received %s, ignored: the number of workers is a setting.", name
    )


def _exit_name(code: int | None) -> str:
    """An exit status as a log field: ``0``, ``3``, or the signal that ended it (``SIGKILL``)."""
    if code is None:
        return "running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-code).name
    return str(code)
