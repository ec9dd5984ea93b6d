"""The load client: one process, asyncio on uvloop, raw sockets, tens of thousands of streams.

``python -m bench.load SCENARIO CONFIG_JSON`` runs one scenario against a server on
127.0.0.1 and prints JSON lines: progress (``{"phase": ...}``) and, last, the result
(``{"done": true, ...}``). Scenarios:

* ``subs``: open subscriptions step by step, read the server's RSS at each step, time
  new subscribers to ``ready`` while a number are held, then check that every held
  stream gets its pings on time;
* ``archive``: hold subscriptions, close some (paced, then in one burst) and time each
  close to its archive file appearing (inotify on the users' ``archived/`` directories);
* ``chat``: users chat in a loop, each with a subscription: chats/s and the time from
  POST to the final ``message`` event (or, for the floor, to the response);
* ``drain``: hold subscriptions, say ``held``, and record how each stream ends while the
  benchmark sends the server SIGTERM.

Client sockets are bound round robin to 127.0.0.2-127.0.0.33, so ephemeral ports (~28k
per source address) never run out. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt

from bench.live import SECRET, raise_nofile

HOST = "127.0.0.1"
SOURCES = [f"127.0.0.{i}" for i in range(2, 34)]
OPEN_CONCURRENCY = 256  # connects in flight: well under the server's listen backlog
READY_TIMEOUT = 60.0
now = time.monotonic


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def token(user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 7200}, SECRET, algorithm="HS256")


class Sub(asyncio.Protocol):
    """One SSE subscription: parses just enough of the chunked stream to time events."""

    def __init__(self, user: str, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        self.user = user
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.buf = b""
        self.started = now()
        self.connected_at = 0.0  # the TCP handshake done (the kernel's, before any accept)
        self.head_at = 0.0  # the response's status line read
        self.ready_at = 0.0
        self.ready: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.pings = 0
        self.last_ping = 0.0
        self.max_gap = 0.0
        self.shutdown = False
        self.clean_end = False
        self.ended_at = 0.0
        self.on_assistant: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  (uvloop's is not a subclass)
        self.connected_at = now()
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if not self.status:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            self.status = int(buf[9:12])
            self.head_at = now()
            buf = buf[end + 4 :]
            if self.status != 200 and not self.ready.done():
                self.ready.set_exception(RuntimeError(f"status {self.status}"))
        while (end := buf.find(b"\n\n")) >= 0:
            self._block(buf[:end])
            buf = buf[end + 2 :]
        if buf.endswith(b"0\r\n\r\n"):
            self.clean_end = True
        self.buf = buf

    def _block(self, block: bytes) -> None:
        t = now()
        for line in block.split(b"\n"):
            if line.startswith(b": ping") or line.startswith(b":ping"):
                if self.last_ping:
                    self.max_gap = max(self.max_gap, t - self.last_ping)
                self.last_ping = t
                self.pings += 1
            elif line.startswith(b"event: "):
                name = line[7:].strip()
                if name == b"ready" and not self.ready.done():
                    self.ready_at = t
                    self.ready.set_result(None)
                elif name == b"shutdown":
                    self.shutdown = True
                elif (
                    name == b"message"
                    and self.on_assistant is not None
                    and b'"role":"assistant"' in block
                ):
                    self.on_assistant()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended_at = now()
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before ready: {exc}"))
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Http(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection with one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    async def request(self, data: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
        if len(self.buf) < end + 4 + length:
            return
        body = self.buf[end + 4 : end + 4 + length]
        self.buf = self.buf[end + 4 + length :]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((int(head[9:12]), body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))


class Load:
    def __init__(self, port: int) -> None:
        self.port = port
        self.count = 0
        self.host = f"{HOST}:{port}".encode()

    def _source(self) -> tuple[str, int]:
        self.count += 1
        return SOURCES[self.count % len(SOURCES)], 0

    def sub_request(self, user: str, query: str = "") -> bytes:
        return (
            b"GET /subscribe"
            + query.encode()
            + b" HTTP/1.1\r\nHost: "
            + self.host
            + b"\r\nAccept: text/event-stream\r\nAuthorization: Bearer "
            + token(user).encode()
            + b"\r\n\r\n"
        )

    async def subscribe(self, user: str, query: str = "") -> Sub:
        sub = Sub(user, self.sub_request(user, query))
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: sub, HOST, self.port, local_addr=self._source())
        await asyncio.wait_for(asyncio.shield(sub.ready), READY_TIMEOUT)
        return sub

    async def subscribe_many(
        self, users: list[str], query: Callable[[str], str] = lambda u: ""
    ) -> list[Sub]:
        limit = asyncio.Semaphore(OPEN_CONCURRENCY)

        async def one(user: str) -> Sub:
            async with limit:
                return await self.subscribe(user, query(user))

        return list(await asyncio.gather(*(one(u) for u in users)))

    async def http(self) -> Http:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(Http, HOST, self.port, local_addr=self._source())
        return proto

    def chat_request(self, user: str, text: str) -> bytes:
        body = json.dumps({"message": text}).encode()
        return (
            b"POST /chat HTTP/1.1\r\nHost: "
            + self.host
            + b"\r\nContent-Type: application/json\r\nAuthorization: Bearer "
            + token(user).encode()
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )


# ---------------------------------------------------------------------------------------
# Scenarios


async def subs(cfg: dict[str, Any]) -> None:
    """Hold subscriptions on command, so several clients can share the work.

    The benchmark sends one JSON command per line and reads one JSON line back:
    ``open`` (hold ``total`` subscriptions), ``probe`` (``count`` new subscribers at
    ``rate`` per second, timed; they ``stay`` or leave), ``pings``, ``quit``.
    """
    load = Load(cfg["port"])
    prefix = cfg["prefix"]
    held: list[Sub] = []
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        command = json.loads(line) if line.strip() else {"cmd": "quit"}
        if command["cmd"] == "open":
            started = now()
            users = [f"{prefix}{i}" for i in range(len(held), command["total"])]
            held += await load.subscribe_many(users)
            emit(held=len(held), open_s=now() - started)
        elif command["cmd"] == "probe":
            stay = command["stay"]
            result, stayed = await _probe(
                load, command["count"], command["rate"], f"{prefix}{len(held)}-", stay
            )
            held += stayed
            emit(held=len(held), **result)
        elif command["cmd"] == "pings":
            emit(**await _watch_pings(held, command["interval"], command["seconds"]))
        else:
            for sub in held:
                sub.close()
            emit(done=True)
            return


async def _probe(
    load: Load, count: int, rate: float, prefix: str, stay: bool
) -> tuple[dict[str, Any], list[Sub]]:
    """New subscribers arriving at ``rate`` per second: time each to its ``ready``; they
    stay subscribed (``stay``) or leave once ready."""
    latencies: list[float] = []
    parts: dict[str, list[float]] = {"tcp": [], "head": []}  # start to connected, to status
    stayed: list[Sub] = []
    errors = 0

    async def one(i: int) -> None:
        nonlocal errors
        started = now()
        try:
            sub = await load.subscribe(f"{prefix}{i}")
        except (OSError, RuntimeError, TimeoutError):
            errors += 1
            return
        latencies.append(sub.ready_at - started)
        parts["tcp"].append((sub.connected_at - started) * 1000)
        parts["head"].append((sub.head_at - started) * 1000)
        if stay:
            stayed.append(sub)
        else:
            sub.close()

    stalls: list[float] = []  # this client's own event loop, late by >= 5 ms

    async def watch() -> None:
        while True:
            due = now() + 0.01
            await asyncio.sleep(0.01)
            if (late := now() - due) >= 0.005:
                stalls.append(late * 1000)

    watcher = asyncio.create_task(watch())
    tasks = []
    started = now()
    for i in range(count):
        delay = started + i / rate - now()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    watcher.cancel()
    ms = [x * 1000 for x in latencies]
    client = {"client_stall_max_ms": max(stalls, default=0.0)}
    return {"ms": ms, **parts, **client, "errors": errors, "window": [started, now()]}, stayed


async def _watch_pings(held: list[Sub], interval: float, seconds: float) -> dict[str, Any]:
    start = now()
    for sub in held:
        sub.pings, sub.max_gap, sub.last_ping = 0, 0.0, start
    await asyncio.sleep(seconds)
    end = now()
    return {
        "gaps": [max(sub.max_gap, end - sub.last_ping) for sub in held],
        "alive": sum(1 for sub in held if not sub.lost.done()),
        "pings": sum(sub.pings for sub in held),
    }


class Inotify:
    """Archive files appearing in watched directories (IN_MOVED_TO/IN_CREATE), timed."""

    IN_CREATE, IN_MOVED_TO, IN_NONBLOCK, IN_CLOEXEC = 0x100, 0x80, 0o4000, 0o2000000

    def __init__(self, on_file: Callable[[str, float], None]) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(self.IN_NONBLOCK | self.IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.owners: dict[int, str] = {}
        self.on_file = on_file
        asyncio.get_running_loop().add_reader(self.fd, self._read)

    def watch(self, path: str, owner: str) -> None:
        wd = self.libc.inotify_add_watch(self.fd, path.encode(), self.IN_CREATE | self.IN_MOVED_TO)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        self.owners[wd] = owner

    def _read(self) -> None:
        t = now()
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        at = 0
        while at < len(data):
            wd, _mask, _cookie, size = struct.unpack_from("iIII", data, at)
            name = data[at + 16 : at + 16 + size].rstrip(b"\0")
            at += 16 + size
            if name.endswith(b".yaml") and not name.startswith(b"."):
                self.on_file(self.owners[wd], t)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)


async def archive(cfg: dict[str, Any]) -> None:
    """Hold ``cfg["held"]`` subscriptions; close the users with dialogs, timing archives."""
    load = Load(cfg["port"])
    paced, burst = cfg["paced"], cfg["burst"]
    if cfg["chats"]:
        await _make_dialogs(load, paced + burst, cfg["chats"])
    emit(phase="dialogs")
    others = [f"u{i}" for i in range(cfg["held"] - len(paced) - len(burst))]
    dirs: dict[str, str] = cfg["dirs"]
    floor = cfg["floor"]  # the floor archives on disconnect only the users named in ?user=

    def query(user: str) -> str:
        return f"?user={user}" if floor and user in dirs else ""

    subs = await load.subscribe_many(paced + burst + others, query=query)
    emit(phase="held", n=len(subs))
    by_user = {sub.user: sub for sub in subs}
    closed: dict[str, float] = {}
    archived: dict[str, float] = {}
    landed = asyncio.Event()  # set on every archive: a phase waits until all of its own landed

    def on_file(user: str, t: float) -> None:
        if user in closed and user not in archived:
            archived[user] = t
            landed.set()

    inotify = Inotify(on_file)
    for user in paced + burst:
        inotify.watch(dirs[user], user)
    results = {}
    for label, users, pace in (("paced", paced, cfg["pace"]), ("burst", burst, 0.0)):
        for user in users:
            closed[user] = now()
            by_user[user].close()
            if pace:
                await asyncio.sleep(pace)
        # Until every user of this phase is archived (not "as many as were closed so far":
        # with a pace, that is reached mid-phase, and the last archives were then missed).
        deadline = now() + 30
        while not all(u in archived for u in users) and now() < deadline:
            landed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(landed.wait(), deadline - now())
        ms = [(archived[u] - closed[u]) * 1000 for u in users if u in archived]
        results[label] = {"ms": ms, "missing": len(users) - len(ms)}
    inotify.close()
    for sub in subs:
        sub.close()
    emit(done=True, **results)


async def _make_dialogs(load: Load, users: list[str], chats: int) -> None:
    limit = asyncio.Semaphore(32)

    async def one(user: str) -> None:
        async with limit:
            conn = await load.http()
            for i in range(chats):
                status, body = await conn.request(load.chat_request(user, f"message {i}"))
                if status != 200:
                    raise RuntimeError(f"chat for {user}: {status} {body[:200]!r}")
            assert conn.transport is not None
            conn.transport.close()

    await asyncio.gather(*(one(u) for u in users))


async def chat(cfg: dict[str, Any]) -> None:
    load = Load(cfg["port"])
    users = [f"chatter-{i}" for i in range(cfg["users"])]
    subs = {} if cfg["floor"] else {s.user: s for s in await load.subscribe_many(users)}
    conns = [await load.http() for _ in users]
    warm_until = now() + cfg["warmup"]
    end = warm_until + cfg["seconds"]
    latencies: list[float] = []
    errors = 0
    counted = 0

    async def user_loop(user: str, conn: Http) -> None:
        nonlocal errors, counted
        sub = subs.get(user)
        n = 0
        while now() < end:
            n += 1
            final: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            if sub is not None:
                sub.on_assistant = lambda f=final: f.done() or f.set_result(now())
            started = now()
            status, _ = await conn.request(load.chat_request(user, f"hello number {n} from me"))
            answered = now()
            if status != 200:
                errors += 1
                continue
            done = await asyncio.wait_for(final, 30) if sub is not None else answered
            if started >= warm_until and done <= end:
                latencies.append(done - started)
                counted += 1

    await asyncio.gather(*(user_loop(u, c) for u, c in zip(users, conns, strict=True)))
    for sub in subs.values():
        sub.close()
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    emit(
        done=True,
        chats=counted,
        seconds=cfg["seconds"],
        per_s=counted / cfg["seconds"],
        ms=[x * 1000 for x in latencies],
        errors=errors,
    )


async def drain(cfg: dict[str, Any]) -> None:
    load = Load(cfg["port"])
    subs = await load.subscribe_many([f"u{i}" for i in range(cfg["held"])])
    emit(phase="held", n=len(subs))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(s.lost for s in subs)), cfg["timeout"])
    ended = [s for s in subs if s.lost.done()]
    emit(
        done=True,
        held=len(subs),
        ended=len(ended),
        shutdown_events=sum(s.shutdown for s in subs),
        clean_ends=sum(s.clean_end for s in subs),
        last_end=max((s.ended_at for s in ended), default=0.0),
    )


SCENARIOS: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
    "subs": subs,
    "archive": archive,
    "chat": chat,
    "drain": drain,
}


def main(scenarios: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] | None = None) -> None:
    """Run the scenario named by argv[1] with the JSON config argv[2] (``scenarios``:
    this module's, or another client's, bench/load_cluster.py)."""
    import uvloop

    raise_nofile()
    scenario, config = sys.argv[1], json.loads(sys.argv[2])
    try:
        uvloop.run((scenarios or SCENARIOS)[scenario](config))
    except Exception as exc:
        emit(error=f"{type(exc).__name__}: {exc}")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
