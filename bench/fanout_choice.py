"""Channel per user, or channel per instance with a presence lookup? Measured.

    python -m bench.fanout_choice [--users 2000] [--events 2000]

Starts a real redis-server of its own (tests/helpers.RedisServer) and plays two
instances in one process: A publishes events of users whose streams are on B.

* per user: B subscribes to one channel per user it holds; A publishes to the user's
  channel (one hop). What archiver does (archiver/redis_fanout.py).
* per instance: B subscribes to its one channel; A first asks presence which instances
  hold the user (the PRESENT_LUA script of archiver/redis_presence.py), then publishes to
  each (a lookup, then a hop); "cached" asks once per 20 events (one reply's worth).
* floor: a bare PUBLISH to one channel B listens to, no lookup (the cost of the hop).

Prints p50/p99 of the delivery latency (A's publish to B's receipt, one at a time), the
time to deliver a burst of events pipelined, the cost of a user's arrival (SUBSCRIBE or
SADD) and Redis's memory for the users' registrations.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis.asyncio as aioredis

from archiver.redis_presence import PRESENT_LUA
from tests.helpers import RedisServer

P = "archiver:"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


class Receiver:
    """B's listener: timestamps each message by its payload's sequence number."""

    def __init__(self, client: Any) -> None:
        self.pubsub = client.pubsub()
        self.got: dict[int, float] = {}
        self.event = asyncio.Event()
        self.want = -1

    async def run(self) -> None:
        while True:
            message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                n = int(message["data"].split(b"|", 1)[0])
                self.got[n] = time.perf_counter()
                if n == self.want or len(self.got) >= self.want:
                    self.event.set()


async def per_user_publish(a: Any, user: str, payload: str, script: Any) -> None:
    await a.publish(P + "user:" + user, payload)


async def per_instance_publish(a: Any, user: str, payload: str, script: Any) -> None:
    for instance in await script(keys=[P + "instances"], args=[user, "A", P]):
        await a.publish(P + "instance:" + instance.decode(), payload)


async def latency(
    a: Any, rx: Receiver, users: list[str], events: int, how: str, script: Any
) -> list[float]:
    out = []
    cache: dict[str, list[bytes]] = {}
    for n in range(events):
        user = random.choice(users)
        payload = f"{n}|" + "x" * 120  # about a reply item's size
        rx.want, rx.event = n, asyncio.Event()
        started = time.perf_counter()
        if how == "user":
            await a.publish(P + "user:" + user, payload)
        elif how == "instance":
            await per_instance_publish(a, user, payload, script)
        elif how == "instance-cached":
            if n % 20 == 0 or user not in cache:
                cache[user] = await script(keys=[P + "instances"], args=[user, "A", P])
            for instance in cache[user]:
                await a.publish(P + "instance:" + instance.decode(), payload)
        else:
            await a.publish(P + "floor", payload)
        await rx.event.wait()
        out.append(rx.got[n] - started)
    return out


async def burst(
    a: Any, rx: Receiver, users: list[str], events: int, how: str, script: Any
) -> float:
    rx.got.clear()
    rx.want, rx.event = events, asyncio.Event()
    started = time.perf_counter()
    pipe = a.pipeline(transaction=False)
    for n in range(events):
        user = users[n % len(users)]
        if how == "user":
            pipe.publish(P + "user:" + user, f"{n}|x")
        else:
            await script(keys=[P + "instances"], args=[user, "A", P], client=pipe)
    if how == "instance":
        found = await pipe.execute()
        pipe = a.pipeline(transaction=False)
        for n, where in enumerate(found):
            for instance in where:
                pipe.publish(P + "instance:" + instance.decode(), f"{n}|x")
    await pipe.execute()
    await rx.event.wait()
    return time.perf_counter() - started


async def main(users_count: int, events: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp)).start()
        try:
            await measure(server.url, users_count, events)
        finally:
            server.stop()


async def measure(url: str, users_count: int, events: int) -> None:
    a, b = aioredis.Redis.from_url(url), aioredis.Redis.from_url(url)
    users = [f"user{i:05d}" for i in range(users_count)]
    script = a.register_script(PRESENT_LUA)
    await a.flushall()
    base = (await a.info("memory"))["used_memory"]
    rx = Receiver(b)
    # B's registrations, each way, timed.
    started = time.perf_counter()
    await b.sadd(P + "instances", "B")
    await b.set(P + "lease:B", "1", px=60000)
    for user in users:
        await b.sadd(P + "users:B", user)
    sadd_s = time.perf_counter() - started
    sets_mem = (await a.info("memory"))["used_memory"] - base
    started = time.perf_counter()
    await rx.pubsub.subscribe(P + "floor", P + "instance:B")
    for user in users:
        await rx.pubsub.subscribe(P + "user:" + user)
    subscribe_s = time.perf_counter() - started
    listener = asyncio.create_task(rx.run())
    await asyncio.sleep(0.5)
    channels_mem = (await a.info("memory"))["used_memory"] - base - sets_mem
    print(f"users held by B: {users_count}; events per run: {events}; redis {url}")
    print(
        f"a user's arrival: SUBSCRIBE {subscribe_s / users_count * 1e6:.0f} us, "
        f"SADD {sadd_s / users_count * 1e6:.0f} us (one at a time)"
    )
    print(
        f"redis memory: {channels_mem / users_count:.0f} B per subscribed channel, "
        f"{sets_mem / users_count:.0f} B per presence-set member"
    )
    for how in ("floor", "user", "instance", "instance-cached"):
        await latency(a, rx, users, 200, how, script)  # warm-up
        values = await latency(a, rx, users, events, how, script)
        print(
            f"latency {how:16s} p50 {pct(values, 0.5):.3f} ms  p99 {pct(values, 0.99):.3f} ms  "
            f"mean {statistics.mean(values) * 1000:.3f} ms"
        )
    for how in ("user", "instance"):
        seconds = await burst(a, rx, users, events * 10, how, script)
        print(
            f"burst {how:9s} {events * 10} events in {seconds * 1000:.0f} ms "
            f"({events * 10 / seconds:,.0f}/s)"
        )
    listener.cancel()
    await a.aclose()
    await b.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(main(args.users, args.events))
