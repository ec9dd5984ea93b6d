"""The load client of the benchmarks of several instances, built on bench/load.py's parts.

``python -m bench.load_cluster SCENARIO CONFIG_JSON`` prints JSON lines as bench/load.py
does (the last one ``{"done": true, ...}``). Scenarios:

* ``cross``: users subscribed on instance X; chats at a steady rate, alternately POSTed
  to X (same instance) and to Y (the other), each timed from the POST to the user's own
  ``message`` event on the stream on X. One chat per user at a time (a second would be
  ``busy``); a delivery that has not arrived after ``wait`` seconds counts as missing.
* ``chat``: bench/load.py's chat loop (each user a subscription and a keep-alive
  connection, chatting in a loop), except that a reply that never reaches the
  subscription counts as ``lost`` after ``wait`` seconds instead of ending the run: with
  several workers a user's stream and chat may be on different processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from bench import load
from bench.load import HOST, READY_TIMEOUT, Http, Load, Sub, emit, now


class Stream(Sub):
    """A subscription that also times the user's own ``message`` events."""

    on_user: Callable[[float], None] | None = None

    def _block(self, block: bytes) -> None:
        super()._block(block)
        lines = block.split(b"\n")
        if b"event: message" in lines and b'"role":"user"' in block and self.on_user:
            self.on_user(now())


async def subscribe(load: Load, user: str) -> Stream:
    stream = Stream(user, load.sub_request(user))
    loop = asyncio.get_running_loop()
    await loop.create_connection(lambda: stream, HOST, load.port, local_addr=load._source())
    await asyncio.wait_for(asyncio.shield(stream.ready), READY_TIMEOUT)
    return stream


async def cross(cfg: dict[str, Any]) -> None:
    x, y = Load(cfg["x"]), Load(cfg["y"])
    users = [f"reader-{i}" for i in range(cfg["users"])]
    streams = list(await asyncio.gather(*(subscribe(x, u) for u in users)))
    conns: dict[str, list[Http]] = {
        "same": [await x.http() for _ in users],
        "cross": [await y.http() for _ in users],
    }
    locks = [asyncio.Lock() for _ in users]
    ms: dict[str, list[float]] = {"same": [], "cross": []}
    missing = {"same": 0, "cross": 0}
    errors = 0

    async def one(i: int) -> None:
        nonlocal errors
        # Pairs of chats go to one user: same instance, then the other, so both kinds
        # meet the same users, streams and moment.
        kind, k = ("same", "cross")[i % 2], (i // 2) % len(users)
        async with locks[k]:
            stream = streams[k]
            arrived: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            stream.on_user = lambda t: arrived.done() or arrived.set_result(t)
            started = now()
            status, _ = await conns[kind][k].request(x.chat_request(users[k], f"chat {i}"))
            if status != 200:
                errors += 1
                return
            try:
                at = await asyncio.wait_for(arrived, cfg["wait"])
            except TimeoutError:
                missing[kind] += 1
                return
            finally:
                stream.on_user = None
            if i >= cfg["warmup"]:
                ms[kind].append((at - started) * 1000)

    tasks = []
    started = now()
    for i in range(cfg["warmup"] + cfg["chats"]):
        delay = started + i / cfg["rate"] - now()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    _close(streams, [c for kind in conns.values() for c in kind])
    emit(done=True, ms=ms, missing=missing, errors=errors, seconds=now() - started)


async def chat(cfg: dict[str, Any]) -> None:
    load = Load(cfg["port"])
    users = [f"chatter-{i}" for i in range(cfg["users"])]
    subs = {s.user: s for s in await load.subscribe_many(users)}
    conns = [await load.http() for _ in users]
    warm_until = now() + cfg["warmup"]
    end = warm_until + cfg["seconds"]
    latencies: list[float] = []
    errors = lost = 0

    async def user_loop(user: str, conn: Http) -> None:
        nonlocal errors, lost
        sub = subs[user]
        n = 0
        while now() < end:
            n += 1
            final: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            sub.on_assistant = lambda f=final: f.done() or f.set_result(now())
            started = now()
            status, _ = await conn.request(load.chat_request(user, f"hello number {n} from me"))
            if status != 200:
                errors += 1
                continue
            try:
                done = await asyncio.wait_for(final, cfg["wait"])
            except TimeoutError:
                lost += 1
                continue
            if started >= warm_until and done <= end:
                latencies.append(done - started)

    await asyncio.gather(*(user_loop(u, c) for u, c in zip(users, conns, strict=True)))
    _close(list(subs.values()), conns)
    emit(
        done=True,
        chats=len(latencies),
        per_s=len(latencies) / cfg["seconds"],
        ms=[x * 1000 for x in latencies],
        errors=errors,
        lost=lost,
    )


def _close(subs: list[Stream] | list[Sub], conns: list[Http]) -> None:
    for sub in subs:
        sub.close()
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()


SCENARIOS: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {"cross": cross, "chat": chat}


if __name__ == "__main__":
    load.main(SCENARIOS)
