"""Live fan-out between instances over Redis pub/sub: one channel per user.

An event is delivered in-process first (``Hub.publish``, by redis_broker.py), then
published to the user's channel ``<prefix>user:<user>``. Each instance subscribes to the
channels of the users it has a connection of (while presence.py has them registered),
and hands what arrives to its hub, skipping what it published itself: so every stream
gets each event once, whichever instance took the chat. Why a channel per user and not
one per instance with a presence lookup: docs/broker.md (measured with
``python -m bench.fanout_choice``): one hop instead of a lookup and a hop.

Publishing never waits: events go into a queue that one task sends in pipelined batches,
in order. While the broker is lost, nothing is queued (the local streams still get
everything; remote ones replay from the journal when they reconnect after recovery).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Callable
from typing import Any

from .hub import Event, Hub
from .redis_presence import Keys, text

BATCH = 500  # events per pipelined round trip
_to_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def encode(origin: str, event: Event) -> str:
    return _to_json([origin, event.name, event.data, event.id])


def decode(payload: Any) -> tuple[str, Event]:
    origin, name, data, event_id = json.loads(payload)
    return origin, Event(name, data, event_id)


class RedisFanout:
    def __init__(self, hub: Hub, keys: Keys, me: str, on_error: Callable[[BaseException], None]):
        self.hub = hub
        self.keys = keys
        self.me = me
        self.on_error = on_error
        self.listening: set[str] = set()  # users whose channel Redis confirmed
        self.connected = asyncio.Event()  # the listener's connection is up
        self._waiters: dict[str, asyncio.Event] = {}
        self._queue: deque[tuple[str, str]] = deque()
        self._wake = asyncio.Event()
        self._pubsub: Any = None
        self._stale = False  # the listener must subscribe all over again
        self.received = 0  # events handed to the hub from other instances

    # -- sending ------------------------------------------------------------------------

    def send(self, user: str, event: Event) -> None:
        self._queue.append((self.keys.channel(user), encode(self.me, event)))
        self._wake.set()

    def drop_pending(self) -> None:
        self._queue.clear()

    def invalidate(self) -> None:
        """Make the listener start over: its connection may be dead without an error
        (a partition sends no RST), or its subscriptions out of date."""
        self._stale = True
        self.connected.clear()

    async def sender(self, redis: Any) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
                try:
                    pipe = redis.pipeline(transaction=False)
                    for channel, payload in batch:
                        pipe.publish(channel, payload)
                    await pipe.execute()
                except Exception as exc:  # any failure: the broker is lost
                    self._queue.clear()
                    self.on_error(exc)

    # -- subscriptions ------------------------------------------------------------------

    async def subscribe(self, users: list[str]) -> None:
        if users and self._pubsub is not None:
            await self._pubsub.subscribe(*map(self.keys.channel, users))

    async def unsubscribe(self, users: list[str]) -> None:
        for user in users:
            self.listening.discard(user)
        if users and self._pubsub is not None:
            await self._pubsub.unsubscribe(*map(self.keys.channel, users))

    async def wait_listening(self, user: str, within: float) -> None:
        if user in self.listening:
            return
        waiter = self._waiters.setdefault(user, asyncio.Event())
        try:
            async with asyncio.timeout(within):
                await waiter.wait()
        except TimeoutError:
            # Never confirmed (the user left first, or the broker is slow): forget the
            # waiter, so users who never subscribed leave nothing behind.
            if self._waiters.get(user) is waiter:
                del self._waiters[user]

    # -- receiving ----------------------------------------------------------------------

    async def listener(self, redis: Any, users: Callable[[], set[str]], retry: float) -> None:
        """Hold one pub/sub connection, subscribed to the users' channels; on any error
        say so (``on_error``), wait ``retry`` seconds, and subscribe all over again."""
        while True:
            pubsub = redis.pubsub()
            self._stale = False
            try:
                await pubsub.subscribe(self.keys.control, *map(self.keys.channel, users()))
                self._pubsub = pubsub
                self.connected.set()
                while not self._stale:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._handle(message)
            except Exception as exc:  # any failure: the broker is lost
                self.on_error(exc)
            finally:
                self._pubsub = None
                self.connected.clear()
                self.listening.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(retry)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = text(message["type"])
        user = self.keys.user_of(text(message["channel"]))
        if user is None:
            return
        if kind == "message":
            origin, event = decode(message["data"])
            if origin != self.me:  # delivered in-process when it was published here
                self.received += 1
                self.hub.publish(user, event)
        elif kind == "subscribe":
            self.listening.add(user)
            waiter = self._waiters.pop(user, None)
            if waiter is not None:
                waiter.set()
        elif kind == "unsubscribe":
            self.listening.discard(user)
